"""Conformance probes without root: option bytes, keys, tokens and HMACs, segment parsing, the probe
catalog, and how the matrix plans probe cells."""

from __future__ import annotations

import socket
import typing
from pathlib import Path

import pytest

from testbed.errors import SpecError
from testbed.matrix.expect import Side
from testbed.matrix.features import FeatureSet, tcp_features, upstream_for_version
from testbed.matrix.probes import expect_probe, observed, probe_document
from testbed.probes import options as o
from testbed.probes.conformance import PROBES, catalog, reply_class
from testbed.spec.experiment import ProbeName
from testbed.spec.matrix import load_suite
from tests.conftest import ROOT

SUITE = ROOT / "experiments" / "suites" / "hackathon.yaml"


# -- option bytes ----------------------------------------------------------------------------------
def test_v0_mp_capable_syn_is_the_rfc6824_form():
    opt = o.mp_capable_syn_v0(0x0102030405060708)
    # kind 30, length 12, subtype 0 / version 0, flags A|H (checksum, HMAC-SHA1), 64-bit key
    assert opt == bytes.fromhex("1e0c00810102030405060708")
    d = o.decode_mptcp(opt)
    assert d == {"subtype": "MP_CAPABLE", "length": 12, "hex": opt.hex(), "version": 0, "flags": "0x81",
                 "sender_key": "0102030405060708"}


def test_v1_mp_capable_forms():
    assert o.mp_capable_syn_v1() == bytes.fromhex("1e040101")  # RFC 8684: no key in the SYN, H = SHA-256
    assert o.mp_capable_syn_v1(version=15) == bytes.fromhex("1e040f01")
    ack = o.mp_capable_ack(0x1111111111111111, 0x2222222222222222)
    assert ack == bytes.fromhex("1e140101" + "11" * 8 + "22" * 8)
    d = o.decode_mptcp(ack)
    assert d["sender_key"] == "11" * 8 and d["receiver_key"] == "22" * 8 and d["version"] == 1


def test_mp_join_forms():
    syn = o.mp_join_syn(0xE4B921EF, 0xD393C5E7, address_id=1)
    assert syn == bytes.fromhex("1e0c1001e4b921efd393c5e7")  # as sent to Linux 6.18 (which took it)
    assert o.decode_mptcp(syn)["form"] == "SYN" and o.decode_mptcp(syn)["token"] == "e4b921ef"
    assert o.mp_join_syn(1, 2, 3, backup=True)[2] == 0x11
    ack = o.mp_join_ack(bytes(range(20)))
    assert len(ack) == 24 and ack[:4] == bytes.fromhex("1e181000") and ack[4:] == bytes(range(20))
    with pytest.raises(ValueError):
        o.mp_join_ack(b"short")


def test_mp_prio_forms():
    assert o.mp_prio(True) == bytes.fromhex("1e0351")  # RFC 8684 §3.3.8: no address ID
    assert o.mp_prio(False) == bytes.fromhex("1e0350")
    assert o.mp_prio(True, address_id=2) == bytes.fromhex("1e045102")  # RFC 6824 form
    assert o.decode_mptcp(o.mp_prio(True, 2))["address_id"] == 2


def test_add_addr_v4_layout():
    mac = bytes.fromhex("7491d5af0dd3c8d0")
    opt = o.add_addr_v4(8, "192.0.2.8", mac)
    assert opt == bytes.fromhex("1e103008c0000208") + mac  # length 16: subtype 3, E=0, ID, address, HMAC
    d = o.decode_mptcp(opt)
    assert d["address"] == "192.0.2.8" and d["address_id"] == 8 and not d["echo"]
    assert o.add_addr_v4(8, "192.0.2.8", b"", echo=True) == bytes.fromhex("1e083108c0000208")
    assert len(o.add_addr_v4(8, "192.0.2.8", mac, port=5201)) == 18


# -- keys, tokens, HMACs ---------------------------------------------------------------------------
def test_token_and_idsn_from_a_key():
    key = 0x6820E9C292864BD7
    digest = o.key_digest(key)
    assert o.token(key) == int.from_bytes(digest[:4], "big")
    assert o.idsn(key) == int.from_bytes(digest[-8:], "big")
    # the token Linux 6.18 reported (MPTCP_INFO on the accepted socket) for a connection with this key
    assert o.token(key) == 0xE4B921EF


@pytest.mark.parametrize(("key", "msg", "result"), [
    # net/mptcp/crypto_test.c (Linux KUnit): the key is the 16 bytes key1 || key2, the message 8 bytes
    ("0b0b0b0b0b0b0b0b", "48692054", "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa"),
    ("aaaaaaaaaaaaaaaa", "dddddddd", "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9"),
    ("0102030405060708", "cdcdcdcd", "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d"),
])
def test_hmac_matches_the_kernels_test_vectors(key, msg, result):
    k = key.encode()
    key1, key2 = int.from_bytes(k[:8], "big"), int.from_bytes(k[8:], "big")
    assert o.hmac_sha256(key1, key2, msg.encode()).hex() == result


def test_join_hmacs_against_a_linux_handshake():
    # an MP_JOIN exchange with Linux 6.18: its SYN/ACK carried 3de3167f48f0fb7e
    key_a, key_b = 0x6B81CE7C4B8E663C, 0x6820E9C292864BD7
    nonce_a, nonce_b = 0xD393C5E7, 0x63136389
    assert o.join_synack_hmac(key_b, key_a, nonce_b, nonce_a).hex() == "3de3167f48f0fb7e"
    full = o.hmac_sha256(key_a, key_b, bytes.fromhex("d393c5e763136389"))
    assert o.join_ack_hmac(key_a, key_b, nonce_a, nonce_b) == full[:20]  # leftmost 160 bits
    assert o.wrong(full[:20]) != full[:20] and o.wrong(o.wrong(full[:20])) == full[:20]


def test_add_addr_hmac_against_a_linux_connection():
    # the control ADD_ADDR Linux 6.18 took (AddAddr +1, echoed): rightmost 64 bits, sender's key first
    key_a, key_b = 0xBE6DF010DEE3D1E6, 0x200667D76F25F737
    mac = o.add_addr_hmac(key_a, key_b, 8, socket.inet_aton("192.0.2.8"))
    assert mac.hex() == "7491d5af0dd3c8d0"
    full = o.hmac_sha256(key_a, key_b, bytes.fromhex("08c00002080000"))  # ID, address, port 0
    assert mac == full[-8:]


# -- reading segments --------------------------------------------------------------------------------
def test_parse_tcp_and_reply_class():
    from scapy.layers.inet import IP, TCP

    def seg(flags: str, *opts: bytes) -> dict:
        pkt = IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=5201, dport=61001, flags=flags, seq=7, ack=9,
                                                       options=[("MSS", 1460), *((x[0], x[2:]) for x in opts)])
        parsed = o.parse_tcp(bytes(pkt))
        assert parsed is not None
        return parsed

    plain = seg("SA")
    assert plain["flags"] == "SA" and plain["seq"] == 7 and plain["ack"] == 9 and plain["sport"] == 5201
    assert reply_class(plain)[0] == "plain"
    capable = seg("SA", bytes.fromhex("1e0c0101") + bytes(8))
    assert reply_class(capable)[0] == "mp-capable-v1"
    assert o.summarize(capable)["mptcp"][0]["sender_key"] == "0" * 16
    assert reply_class(seg("R"))[0] == "rst"
    assert reply_class(None)[0] == "no-reply"
    assert reply_class(seg("SA", o.mp_join_syn(1, 2)))[0] == "mp-join"
    assert o.parse_tcp(b"\x60" + bytes(60)) is None  # not IPv4
    rst = o.decode_mptcp(bytes.fromhex("1e048001"))
    assert rst["subtype"] == "MP_TCPRST" and rst["reason"] == "mptcp-specific"


def test_malformed_options_stop_parsing():
    assert o.tcp_options(bytes.fromhex("0101020405b4")) == [(2, bytes.fromhex("020405b4"))]
    assert o.tcp_options(bytes.fromhex("1e01ffff")) == []  # a length below 2
    assert o.tcp_options(bytes.fromhex("1e0c0000")) == []  # longer than what is left


# -- the catalog --------------------------------------------------------------------------------
def test_catalog_matches_the_experiment_schema():
    assert set(typing.get_args(ProbeName)) == set(PROBES)
    cat = catalog()
    for name, entry in cat.items():
        assert entry["description"] and "v1" in entry["expectations"] and "tcp" in entry["expectations"], name
        assert entry["expectations"]["tcp"]["outcome"] == "plain"
        assert "RFC 8684" in entry["expectations"]["v1"]["rfc"], name
    assert cat["v0-capable"]["expectations"]["v1"]["outcome"] == "plain"
    assert cat["unknown-version"]["expectations"]["v1"]["outcome"] == "mp-capable-v1"
    assert cat["v0-capable"]["expectations"]["v0"]["outcome"] == "mp-capable-v0"


def test_agent_lists_the_catalog():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "testbed" / "probes" / "probe_agent.py"), "list"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(catalog()))


def test_probe_requirements_are_known_features():
    from testbed.matrix.expect import KNOWN_REQUIREMENTS
    from testbed.matrix.features import MIB_SINCE

    for cls in PROBES.values():
        for req in cls.requires:
            assert req in KNOWN_REQUIREMENTS or (req.startswith("mib:") and req[4:] in MIB_SINCE), req


# -- matrix planning ----------------------------------------------------------------------------
def v1(name: str = "host", version: tuple[int, int] = (6, 18)) -> Side:
    return Side(name, upstream_for_version(name, version, f"{version[0]}.{version[1]}"))


def test_expectation_per_server():
    assert expect_probe("v0-capable", v1()).expected_outcome == "plain"
    e = expect_probe("unknown-version", v1())
    assert e.status == "run" and e.mode == "probe" and e.expected_outcome == "mp-capable-v1"
    assert "RFC 8684 §3.1" in e.reason
    tcp = Side("tcp", tcp_features("tcp"))
    for name in PROBES:
        assert expect_probe(name, tcp).expected_outcome == "plain", name
    old = expect_probe("mp-prio-address-id", v1("linux-5.10", (5, 10)))
    assert old.status == "unsupported" and "mp_prio" in old.reason
    v0 = Side("v0", FeatureSet("v0", 0, "4.4"))
    assert expect_probe("v0-capable", v0).expected_outcome == "mp-capable-v0"
    assert expect_probe("join-bad-hmac", v0).status == "unsupported"
    gone = Side("guest", upstream_for_version("guest", (6, 1), "6.1"), False, "no image")
    assert expect_probe("join-bad-hmac", gone).status == "unavailable"


def test_probe_cell_document():
    data = {"name": "probes", "topology": {"file": "../topologies/probe.yaml.j2"}, "expect": {"outcome": "mptcp"},
            "workloads": [{"type": "probe", "probe": "v0-capable"}, {"type": "probe", "probe": "join-bad-hmac",
                                                                      "server": "srv"}]}
    doc = probe_document(data, ROOT / "experiments" / "probes.yaml", "join-bad-hmac", "cell", "tcp",
                         {"stack": "tcp"}, 120.0)
    assert doc["workloads"] == [{"type": "probe", "probe": "join-bad-hmac", "server": "srv", "speaks": "tcp"}]
    assert doc["stacks"] == {"srv": {"stack": "tcp"}} and "expect" not in doc and doc["timeout"] == 100.0
    assert Path(doc["topology"]["file"]).is_absolute()
    assert observed({"workloads": {"x": {"type": "probe", "ok": True, "observed": "rst"}}}) == "rst"
    assert observed({"workloads": {"x": {"type": "bulk"}}}) is None


def test_matrix_plans_probe_cells(tmp_path):
    from testbed.matrix.runner import MatrixRunner

    suite = load_suite(SUITE)
    assert suite.suite.probes and suite.probe_experiment is not None
    cells = MatrixRunner(suite, tmp_path, scenarios=["probes"], servers=["host", "tcp"]).plan()
    assert len(cells) == 2 * len(suite.suite.probes)
    assert {c.client for c in cells} == {f"probe:{p}" for p in suite.suite.probes}
    assert all(c.verdict is None and c.scenario == "probes" for c in cells), [c.reason for c in cells]
    one = MatrixRunner(suite, tmp_path, clients=["probe:join-bad-hmac"], servers=["host"]).plan()
    assert [c.key for c in one] == ["probes/probe:join-bad-hmac/host"]
    assert not [c for c in MatrixRunner(suite, tmp_path, clients=["host"], servers=["host"]).plan()
                if c.scenario == "probes"]  # --clients names the probes it wants
    must = MatrixRunner(suite, tmp_path, scenarios=["probes"], must_include="probe:v0-capable").plan()
    assert must and all(c.client == "probe:v0-capable" for c in must)


def test_suite_refuses_unknown_probes_with_positions(tmp_path):
    text = SUITE.read_text().replace("probes: [v0-capable,", "probes: [v0-capabel,")
    bad = tmp_path / "suites" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(text.replace("../", str(ROOT / "experiments") + "/"))
    with pytest.raises(SpecError) as err:
        load_suite(bad)
    problem = str(err.value.problems[0])
    assert "probes" in problem and "v0-capable" in problem and f"{bad}:" in problem
    clash = text.replace("  - name: basic-handshake", "  - name: probes")
    bad.write_text(clash.replace("../", str(ROOT / "experiments") + "/"))
    with pytest.raises(SpecError):
        load_suite(bad)
