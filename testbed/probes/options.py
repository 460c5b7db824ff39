"""MPTCP options at byte level, and the keys, tokens and HMACs of RFC 8684 (and the v0 forms of RFC 6824
the probes send). Standard library only: the probe agent imports it inside a node's namespace.

Every option is returned as its full bytes (kind 30, length, subtype, ...), ready to be put into a
TCP header; `parse_tcp` and `decode_mptcp` read segments back for the probes' records.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from typing import Any

MPTCP_KIND = 30
SUBTYPES = {0: "MP_CAPABLE", 1: "MP_JOIN", 2: "DSS", 3: "ADD_ADDR", 4: "REMOVE_ADDR", 5: "MP_PRIO",
            6: "MP_FAIL", 7: "MP_FASTCLOSE", 8: "MP_TCPRST", 15: "MP_EXPERIMENTAL"}
MP_CAPABLE, MP_JOIN, DSS, ADD_ADDR, REMOVE_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE, MP_TCPRST = range(9)

# MP_CAPABLE flags (RFC 8684 §3.1): A checksum required, B extensibility, C no joins to the source
# address, H HMAC-SHA256 (in RFC 6824: HMAC-SHA1).
CAP_A, CAP_B, CAP_C, CAP_H = 0x80, 0x40, 0x20, 0x01
TCP_FLAGS = "FSRPAUEC"  # bit 0 .. bit 7
MP_TCPRST_REASONS = {0: "unspecified", 1: "mptcp-specific", 2: "lack-of-resources",
                     3: "administratively-prohibited", 4: "too-much-outstanding-data",
                     5: "unacceptable-performance", 6: "middlebox-interference"}


def _option(subtype_byte: int, body: bytes) -> bytes:
    return bytes([MPTCP_KIND, 3 + len(body), subtype_byte]) + body


# -- MP_CAPABLE ----------------------------------------------------------------------------------
def mp_capable_syn_v1(version: int = 1, flags: int = CAP_H) -> bytes:
    """RFC 8684 §3.1: the SYN's MP_CAPABLE has no key (length 4)."""
    return _option((MP_CAPABLE << 4) | (version & 0x0F), bytes([flags]))


def mp_capable_syn_v0(key: int, flags: int = CAP_A | CAP_H) -> bytes:
    """RFC 6824 §3.1: the SYN's MP_CAPABLE carries the sender's 64-bit key (length 12), version 0,
    and in v0 the H bit means HMAC-SHA1."""
    return _option((MP_CAPABLE << 4) | 0, bytes([flags]) + struct.pack("!Q", key))


def mp_capable_ack(key_local: int, key_remote: int, version: int = 1, flags: int = CAP_H) -> bytes:
    """The third ACK's MP_CAPABLE: the sender's key, then the receiver's (length 20)."""
    return _option((MP_CAPABLE << 4) | (version & 0x0F), bytes([flags]) + struct.pack("!QQ", key_local, key_remote))


# -- MP_JOIN --------------------------------------------------------------------------------------
def mp_join_syn(token: int, nonce: int, address_id: int = 0, backup: bool = False) -> bytes:
    """RFC 8684 §3.2: the receiver's token and the sender's random number (length 12)."""
    return _option((MP_JOIN << 4) | int(backup), bytes([address_id & 0xFF]) + struct.pack("!II", token, nonce))


def mp_join_ack(hmac160: bytes) -> bytes:
    """The third ACK's MP_JOIN: 160 bits of the sender's HMAC (length 24)."""
    if len(hmac160) != 20:
        raise ValueError("the MP_JOIN ACK carries 20 bytes of HMAC")
    return _option(MP_JOIN << 4, b"\0" + hmac160)


# -- other subtypes -------------------------------------------------------------------------------
def mp_prio(backup: bool, address_id: int | None = None) -> bytes:
    """RFC 8684 §3.3.8: length 3, no address ID. With `address_id`: the RFC 6824 §3.3.8 form (length 4)."""
    first = (MP_PRIO << 4) | int(backup)
    if address_id is None:
        return bytes([MPTCP_KIND, 3, first])
    return bytes([MPTCP_KIND, 4, first, address_id & 0xFF])


def add_addr_v4(address_id: int, address: str, truncated_hmac: bytes, port: int | None = None,
                echo: bool = False) -> bytes:
    """RFC 8684 §3.4.1 ADD_ADDR for an IPv4 address: address ID, address, optional port and the
    truncated (64-bit) HMAC; an echo carries no HMAC."""
    body = bytes([address_id & 0xFF]) + socket.inet_aton(address)
    if port is not None:
        body += struct.pack("!H", port)
    if not echo:
        if len(truncated_hmac) != 8:
            raise ValueError("ADD_ADDR carries 8 bytes of HMAC")
        body += truncated_hmac
    return _option((ADD_ADDR << 4) | int(echo), body)


def dss_ack(data_ack: int) -> bytes:
    """A DSS carrying only a 64-bit data ACK (flags a=1, A=1)."""
    return _option(DSS << 4, bytes([0x03]) + struct.pack("!Q", data_ack & 0xFFFFFFFFFFFFFFFF))


# -- keys, tokens, HMACs (RFC 8684 §3.1, §3.2, §3.4.1) --------------------------------------------
def key_digest(key: int) -> bytes:
    return hashlib.sha256(struct.pack("!Q", key)).digest()


def token(key: int) -> int:
    """The most significant 32 bits of SHA-256 over the key (RFC 8684 §3.2)."""
    return int.from_bytes(key_digest(key)[:4], "big")


def idsn(key: int) -> int:
    """The initial data sequence number: the least significant 64 bits of SHA-256 over the key."""
    return int.from_bytes(key_digest(key)[-8:], "big")


def hmac_sha256(key1: int, key2: int, message: bytes) -> bytes:
    """HMAC-SHA256 with the key Key1 || Key2 (each 64 bits, network order), as MPTCP computes it."""
    return hmac.new(struct.pack("!QQ", key1, key2), message, hashlib.sha256).digest()


def join_synack_hmac(key_b: int, key_a: int, nonce_b: int, nonce_a: int) -> bytes:
    """What the responder (B) puts in its MP_JOIN SYN/ACK: the leftmost 64 bits of
    HMAC(Key=(Key-B + Key-A), Msg=(R-B + R-A))."""
    return hmac_sha256(key_b, key_a, struct.pack("!II", nonce_b, nonce_a))[:8]


def join_ack_hmac(key_a: int, key_b: int, nonce_a: int, nonce_b: int) -> bytes:
    """What the initiator (A) puts in its MP_JOIN third ACK: the leftmost 160 bits of
    HMAC(Key=(Key-A + Key-B), Msg=(R-A + R-B))."""
    return hmac_sha256(key_a, key_b, struct.pack("!II", nonce_a, nonce_b))[:20]


def add_addr_hmac(key_sender: int, key_receiver: int, address_id: int, address: bytes, port: int = 0) -> bytes:
    """The rightmost 64 bits of HMAC(Key=(sender's key + receiver's key), Msg=(Address ID + address +
    port)); the port is two zero bytes when the option has none."""
    return hmac_sha256(key_sender, key_receiver, bytes([address_id & 0xFF]) + address + struct.pack("!H", port))[-8:]


def wrong(data: bytes) -> bytes:
    """`data` with every bit flipped: certainly not the right value."""
    return bytes(b ^ 0xFF for b in data)


# -- reading segments back ------------------------------------------------------------------------
def flags_text(flags: int) -> str:
    return "".join(c for i, c in enumerate(TCP_FLAGS) if flags & (1 << i))


def tcp_options(raw: bytes) -> list[tuple[int, bytes]]:
    """(kind, whole option bytes) of each option; NOPs left out, parsing stops at the end marker or
    at a malformed length."""
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            break
        out.append((kind, bytes(raw[i:i + raw[i + 1]])))
        i += raw[i + 1]
    return out


def parse_tcp(packet: bytes) -> dict[str, Any] | None:
    """An IPv4 TCP segment's header fields and options, or None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    tcp = packet[ihl:total]
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", tcp, 0)
    doff = (off_flags >> 12) * 4
    if doff < 20 or doff > len(tcp):
        return None
    return {"src": socket.inet_ntoa(packet[12:16]), "dst": socket.inet_ntoa(packet[16:20]), "sport": sport,
            "dport": dport, "seq": seq, "ack": ack, "flags": flags_text(off_flags & 0xFF), "window": window,
            "options": tcp_options(tcp[20:doff]), "payload": len(tcp) - doff}


def decode_mptcp(option: bytes) -> dict[str, Any]:
    """One MPTCP option (kind, length, ...) as named fields (RFC 8684 forms; v0 MP_CAPABLE keys too)."""
    length = option[1]
    subtype = option[2] >> 4 if length > 2 else None
    out: dict[str, Any] = {"subtype": SUBTYPES.get(subtype, f"unknown-{subtype}") if subtype is not None else None,
                           "length": length, "hex": option.hex()}
    body = option[3:]
    if subtype == MP_CAPABLE:
        out["version"] = option[2] & 0x0F
        if body:
            out["flags"] = f"0x{body[0]:02x}"
        if len(body) >= 9:
            out["sender_key"] = f"{int.from_bytes(body[1:9], 'big'):016x}"
        if len(body) >= 17:
            out["receiver_key"] = f"{int.from_bytes(body[9:17], 'big'):016x}"
    elif subtype == MP_JOIN:
        out["backup"] = bool(option[2] & 0x01)
        if length == 12:
            out.update(form="SYN", address_id=body[0], token=f"{int.from_bytes(body[1:5], 'big'):08x}",
                       nonce=f"{int.from_bytes(body[5:9], 'big'):08x}")
        elif length == 16:
            out.update(form="SYN/ACK", address_id=body[0], hmac=body[1:9].hex(),
                       nonce=f"{int.from_bytes(body[9:13], 'big'):08x}")
        elif length == 24:
            out.update(form="ACK", hmac=body[1:21].hex())
    elif subtype == ADD_ADDR:
        out["echo"] = bool(option[2] & 0x01)
        if body:
            out["address_id"] = body[0]
        if len(body) >= 5:
            out["address"] = socket.inet_ntoa(body[1:5])
    elif subtype == MP_PRIO:
        out["backup"] = bool(option[2] & 0x01)
        if length == 4:
            out["address_id"] = body[0]
    elif subtype == MP_TCPRST and len(body) >= 1:
        out["transient"] = bool(option[2] & 0x01)
        out["reason"] = MP_TCPRST_REASONS.get(body[0], body[0])
    return out


def summarize(seg: dict[str, Any]) -> dict[str, Any]:
    """A parsed segment as recorded in a probe's result: flags, numbers, option kinds, MPTCP options."""
    names = {2: "MSS", 3: "WScale", 4: "SAckOK", 5: "SAck", 8: "Timestamp", 30: "MPTCP", 34: "TFO"}
    return {"src": f"{seg['src']}:{seg['sport']}", "dst": f"{seg['dst']}:{seg['dport']}", "flags": seg["flags"],
            "seq": seg["seq"], "ack": seg["ack"], "payload": seg["payload"],
            "options": [names.get(k, str(k)) for k, _ in seg["options"]],
            "mptcp": [decode_mptcp(o) for k, o in seg["options"] if k == MPTCP_KIND]}


def mptcp_options(seg: dict[str, Any], subtype: int | None = None) -> list[bytes]:
    return [o for k, o in seg["options"] if k == MPTCP_KIND and len(o) > 2
            and (subtype is None or o[2] >> 4 == subtype)]
