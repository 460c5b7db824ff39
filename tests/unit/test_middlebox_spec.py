"""The middlebox node kind without root: validation with file positions, the exact kernel rules each
behaviour becomes, and the mangler's per-segment rewriting and injected segments (checked with scapy)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from testbed.emulation.functions import mangler as mg
from testbed.emulation.functions.base import FunctionContext
from testbed.emulation.functions.middlebox import QUEUES, Middlebox
from testbed.errors import SpecError
from testbed.spec.load import load_topology
from testbed.spec.template import parse_set
from tests.conftest import ROOT

LINE = re.compile(r"^[^:\n]+:\d+:\d+: [^:\n]*: .+$")


def topology(tmp_path: Path, behaviours: str, links: str | None = None) -> Path:
    text = textwrap.dedent("""
        name: t
        nodes:
          client: {}
          mb:
            kind: middlebox
            behaviours:
        BEHAVIOURS
          server: {}
        links:
        LINKS
        """).lstrip()
    body = textwrap.indent(textwrap.dedent(behaviours).strip("\n"), "      ")
    links = links or '  - ["client:eth0", "mb:eth0"]\n  - ["mb:eth1", "server:eth0"]'
    p = tmp_path / "t.yaml"
    p.write_text(text.replace("BEHAVIOURS", body).replace("LINKS", links))
    return p


def problems(tmp_path: Path, behaviours: str, links: str | None = None) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_topology(topology(tmp_path, behaviours, links))
    out = [str(p) for p in exc.value.problems]
    assert all(LINE.match(p) for p in out), out
    return out


# -- validation --------------------------------------------------------------------------------------


def test_unknown_behaviour_is_refused_with_did_you_mean_and_position(tmp_path):
    (msg,) = problems(tmp_path, """
        - {action: strip_mptcp, when: syn}
        - {action: strp_mptcp, when: syn}
        """)
    assert msg.startswith(f"{tmp_path / 't.yaml'}:8:9: nodes.mb.behaviours[1]: ")
    assert "unknown action 'strp_mptcp' (did you mean 'strip_mptcp'?)" in msg
    assert "inject_mp_prio" in msg  # the list of what exists


def test_a_bare_action_name_takes_the_defaults(tmp_path):
    lt = load_topology(topology(tmp_path, "- randomise_seq\n- {action: strip_mptcp}"))
    first, second = lt.topology.nodes["mb"].behaviours
    assert (first.action, first.direction) == ("randomise_seq", "both")
    assert (second.action, second.when, second.direction) == ("strip_mptcp", "all", "both")
    (msg,) = problems(tmp_path, "- randomise_sec")
    assert "unknown action 'randomise_sec' (did you mean 'randomise_seq'?)" in msg


def test_bad_direction_is_refused_with_its_choices(tmp_path):
    (msg,) = problems(tmp_path, "- {action: randomise_seq, direction: wlan0}")
    assert ":7:33: nodes.mb.behaviours[0].direction: 'wlan0' is not one of 'both', 'to_server' or 'to_client'" in msg


def test_misspelt_field_and_bad_when(tmp_path):
    msgs = problems(tmp_path, """
        - {action: strip_mptcp, wen: syn}
        - {action: strip_mptcp, when: handshake, direction: to_client}
        """)
    assert any("behaviours[0].wen: unknown field 'wen' (did you mean 'when'?)" in m for m in msgs), msgs
    assert any("behaviours[1].when: 'handshake' is not one of 'syn', 'all' or 'after_handshake'" in m
               for m in msgs), msgs


def test_invalid_combinations(tmp_path):
    (msg,) = problems(tmp_path, "- {action: strip_mptcp, when: syn, after: 1MB}")
    assert "behaviours[0].after: 'after' applies only to when: after_handshake" in msg
    (msg,) = problems(tmp_path, "- {action: inject_rst, after: {bytes: 1MB, seconds: 2}}")
    assert "behaviours[0].after: give exactly one of bytes, packets or seconds" in msg
    (msg,) = problems(tmp_path, "- {action: inject_mp_prio, after: {seconds: 1}, address_id: 300}")
    assert "behaviours[0].address_id: " in msg and "255" in msg
    (msg,) = problems(tmp_path, """
        - {action: randomise_seq, direction: to_server}
        - {action: randomise_seq}
        """)
    assert "nodes.mb.behaviours: behaviours [0] and [1] are both randomise_seq for to_server" in msg
    (msg,) = problems(tmp_path, """
        - {action: strip_mptcp, when: all}
        - {action: strip_mptcp, when: syn, direction: to_client}
        """)
    assert "both strip_mptcp for to_client" in msg
    (msg,) = problems(tmp_path, "- {action: corrupt_payload, probability: 0%}")
    assert "behaviours[0].probability: " in msg


def test_a_middlebox_needs_two_links(tmp_path):
    (msg,) = problems(tmp_path, "- {action: randomise_seq}", links='  - ["client:eth0", "mb:eth0"]')
    assert ":4:3: nodes.mb: a middlebox forwards between its links: it needs at least two, 'mb' has 1" in msg


def test_every_template_behaviour_renders_and_validates():
    choices = ["none", "strip-syn", "strip-all", "strip-after-handshake", "drop-add-addr", "drop-mp-join-syn",
               "blackhole-mp-capable-syn", "inject-rst", "corrupt-payload", "randomise-seq", "mp-prio-attack"]
    for behaviour in choices:
        lt = load_topology(ROOT / "topologies/middlebox.yaml.j2",
                           parse_set([f"behaviour={behaviour}", "path=both", "control_at=2s", "count=2"]))
        nodes = lt.topology.nodes
        assert nodes["mb_wifi"].kind == nodes["mb_cell"].kind == "middlebox"
        assert len(nodes["mb_wifi"].behaviours) == {"none": 0, "mp-prio-attack": 2}.get(behaviour, 1)
        assert [i.name for i in lt.resolved.interfaces["client"]] == ["wlan0", "cell0"]
    with pytest.raises(SpecError) as exc:
        load_topology(ROOT / "topologies/middlebox.yaml.j2", parse_set(["behaviour=strip-sin"]))
    assert "did you mean 'strip-syn'" in str(exc.value)


# -- what each behaviour becomes ----------------------------------------------------------------------


def built(tmp_path: Path, behaviours: str, seed: int = 1) -> dict:
    lt = load_topology(topology(tmp_path, behaviours))
    ctx = FunctionContext("mb", None, lt.resolved.interfaces["mb"], lt.resolved, tmp_path / "log", None, seed)
    return Middlebox(lt.topology.nodes["mb"], ctx).build()


def test_strip_at_handshake_is_iptables_tcpoptstrip(tmp_path):
    cfg = built(tmp_path, """
        - {action: strip_mptcp, when: syn, direction: to_server}
        - {action: strip_mptcp, when: all, direction: to_client}
        """)
    assert cfg["implemented_by"] == {"[0] strip_mptcp": "iptables", "[1] strip_mptcp": "iptables"}
    assert cfg["iptables_rules"] == [
        ["-p", "tcp", "--tcp-flags", "SYN", "SYN", "-m", "conntrack", "--ctdir", "ORIGINAL",
         "-m", "comment", "--comment", "[0] strip_mptcp syn", "-j", "TCPOPTSTRIP", "--strip-options", "30"],
        ["-p", "tcp", "-m", "conntrack", "--ctdir", "REPLY",
         "-m", "comment", "--comment", "[1] strip_mptcp all", "-j", "TCPOPTSTRIP", "--strip-options", "30"]]
    apply = cfg["apply"]
    assert ["ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off"] in apply
    assert ["ethtool", "-K", "eth1", "tso", "off", "gso", "off", "gro", "off"] in apply
    assert ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"] in apply
    for tool in ("iptables", "ip6tables"):
        assert [tool, "-w", "-t", "mangle", "-N", "TB_MIDDLEBOX"] in apply
        assert [tool, "-w", "-t", "mangle", "-A", "TB_MIDDLEBOX", *cfg["iptables_rules"][0]] in apply
        assert apply.index([tool, "-w", "-t", "mangle", "-A", "FORWARD", "-j", "TB_MIDDLEBOX"]) > \
            apply.index([tool, "-w", "-t", "mangle", "-A", "TB_MIDDLEBOX", *cfg["iptables_rules"][1]])
        assert [tool, "-w", "-t", "mangle", "-D", "FORWARD", "-j", "TB_MIDDLEBOX"] in cfg["remove"]
        assert [tool, "-w", "-t", "mangle", "-X", "TB_MIDDLEBOX"] in cfg["remove"]
    assert "mangler" not in cfg and not cfg["nft_rules"]


def test_drops_are_nftables_rules(tmp_path):
    cfg = built(tmp_path, """
        - {action: drop_add_addr, direction: to_client, count: 1}
        - {action: drop_mp_join_syn, probability: 25%}
        - {action: blackhole_mp_capable_syn, direction: to_server}
        """)
    assert cfg["nft_rules"] == [
        'ct direction reply tcp option mptcp subtype 3 limit rate 1/day burst 1 packets counter drop '
        'comment "[0] drop_add_addr"',
        'tcp flags syn tcp option mptcp subtype 1 numgen random mod 10000 < 2500 counter drop '
        'comment "[1] drop_mp_join_syn"',
        'ct direction original tcp flags syn tcp option mptcp subtype 0 counter drop '
        'comment "[2] blackhole_mp_capable_syn"']
    nft = [a for a in cfg["apply"] if a[0] == "nft"]
    assert len(nft) == 1 and nft[0][1].startswith(
        "add table inet testbed_middlebox; add chain inet testbed_middlebox forward "
        "{ type filter hook forward priority -160; policy accept; }; add rule inet testbed_middlebox forward ct ")
    assert ["nft", "delete", "table", "inet", "testbed_middlebox"] in cfg["remove"]
    assert not cfg["iptables_rules"]


def test_rewrites_and_injections_go_to_the_mangler(tmp_path):
    cfg = built(tmp_path, """
        - {action: strip_mptcp, when: after_handshake, after: 1MB}
        - {action: corrupt_payload, direction: to_server, after: 2MB, offset: 3, xor: 1}
        - {action: randomise_seq}
        - {action: inject_rst, direction: to_client, after: {packets: 100}, count: 2}
        - {action: inject_mp_prio, direction: to_server, after: {seconds: 1.5s}, address_id: 2}
        - {action: inject_mp_prio, direction: to_server, after: {bytes: 10KB}, backup: false}
        """, seed=7)
    assert set(cfg["implemented_by"].values()) == {"mangler"}
    assert cfg["iptables_rules"] == [
        ["-p", "tcp", "-m", "conntrack", "--ctdir", "ORIGINAL", "-m", "comment", "--comment", "mangler to_server",
         "-j", "NFQUEUE", "--queue-num", "31000", "--queue-bypass"],
        ["-p", "tcp", "-m", "conntrack", "--ctdir", "REPLY", "-m", "comment", "--comment", "mangler to_client",
         "-j", "NFQUEUE", "--queue-num", "31001", "--queue-bypass"]]
    m = cfg["mangler"]
    assert m["queues"] == QUEUES and m["seed"] == built(tmp_path, "- {action: randomise_seq}", seed=7)["mangler"]["seed"]
    both = ["to_server", "to_client"]
    assert m["behaviours"] == [
        {"index": 0, "action": "strip_mptcp", "directions": both, "after": 1_000_000},
        {"index": 1, "action": "corrupt_payload", "directions": ["to_server"], "after": 2_000_000, "count": 1,
         "probability": None, "offset": 3, "xor": 1},
        {"index": 2, "action": "randomise_seq", "directions": both},
        {"index": 3, "action": "inject_rst", "directions": ["to_client"], "after": {"packets": 100}, "count": 2},
        {"index": 4, "action": "inject_mp_prio", "directions": ["to_server"], "after": {"seconds": 1.5},
         "count": 1, "address_id": 2, "backup": True},
        {"index": 5, "action": "inject_mp_prio", "directions": ["to_server"], "after": {"bytes": 10_000},
         "count": 1, "address_id": None, "backup": False}]
    argv = cfg["mangler_argv"]
    assert argv[1].endswith("testbed/emulation/functions/mangler.py")
    assert argv[2:] == ["--config", str(tmp_path / "log/mangler.json"), "--counts",
                        str(tmp_path / "log/mangler-counts.json")]
    assert mg.load_config(json.dumps(m))["behaviours"] == m["behaviours"]


# -- the mangler, segment by segment --------------------------------------------------------------------

C, S = "10.0.0.1", "10.0.4.2"
DSS = bytes([0x20, 0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # DSS with a DATA_ACK, 20 bytes
MPC_DATA = bytes([0x01, 0x81]) + bytes(16) + bytes([0, 100])  # MP_CAPABLE (v1) carrying a data length


def seg(src=C, dst=S, sport=40000, dport=5201, flags="A", seq=1000, ack=5000, mptcp=DSS, payload=b"",
        sack=None, v6=False) -> bytes:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (111, 222))]
    if sack:
        opts += [("NOP", None), ("NOP", None), ("SAck", tuple(x for block in sack for x in block))]
    if mptcp is not None:
        opts.append((30, mptcp))
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, options=opts) / payload)


def valid(raw: bytes) -> TCP:
    """The TCP layer, after checking that the checksum the mangler wrote is the one scapy computes."""
    pkt = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    written = pkt[TCP].chksum
    del pkt[TCP].chksum
    again = (IP if raw[0] >> 4 == 4 else IPv6)(bytes(pkt))
    assert written == again[TCP].chksum
    return again[TCP]


def mptcp_kinds(tcp: TCP) -> list:
    return [o for o in tcp.options if o[0] == 30]


def mangler(*behaviours: dict, seed: int = 3, clock=None) -> mg.Mangler:
    return mg.Mangler({"queues": QUEUES, "seed": seed, "behaviours": list(behaviours)},
                      **({"clock": clock} if clock else {}))


@pytest.mark.parametrize("v6", [False, True])
def test_after_handshake_strip_keeps_the_handshake_and_nops_the_rest(v6):
    src, dst = ("2001:db8::1", "2001:db8:4::2") if v6 else (C, S)
    m = mangler({"index": 0, "action": "strip_mptcp", "directions": ["to_server", "to_client"], "after": 0})
    syn = seg(src, dst, flags="S", mptcp=bytes([0x01, 0x81]), v6=v6)
    assert m.handle(syn, "to_server") == (None, [])  # SYNs untouched
    first = seg(src, dst, mptcp=MPC_DATA, payload=b"x" * 100, v6=v6)
    assert m.handle(first, "to_server") == (None, [])  # MP_CAPABLE with data untouched
    out, inject = m.handle(seg(dst, src, 5201, 40000, mptcp=DSS, v6=v6), "to_client")
    assert out is not None and not inject
    tcp = valid(out)
    assert mptcp_kinds(tcp) == [] and [o[0] for o in tcp.options].count("NOP") == 2 + 20
    assert len(out) == len(seg(dst, src, 5201, 40000, mptcp=DSS, v6=v6))  # lengths unchanged
    assert m.behaviours[0].counts == {"segments": 1, "DSS": 1}


def test_after_handshake_strip_waits_for_after_bytes():
    m = mangler({"index": 0, "action": "strip_mptcp", "directions": ["to_server"], "after": 250})
    for i in range(3):  # 0, 100, 200 bytes seen before each: untouched
        assert m.handle(seg(seq=1000 + 100 * i, payload=b"y" * 100), "to_server")[0] is None
    assert m.handle(seg(dst=C, src=S, sport=5201, dport=40000), "to_client")[0] is None  # wrong direction
    out, _ = m.handle(seg(seq=1300, payload=b"y" * 100), "to_server")
    assert mptcp_kinds(valid(out)) == []


def test_corrupt_payload_flips_one_byte_after_the_threshold_and_fixes_the_tcp_checksum():
    m = mangler({"index": 0, "action": "corrupt_payload", "directions": ["to_server"], "after": 1000, "count": 1,
                 "probability": None, "offset": 2, "xor": 0xFF})
    data = bytes(range(200))
    assert m.handle(seg(payload=data[:100] * 10), "to_server")[0] is None  # bytes 0..999: before the threshold
    out, _ = m.handle(seg(seq=2000, payload=data), "to_server")
    tcp = valid(out)
    got = bytes(tcp.payload)
    assert got[2] == data[2] ^ 0xFF and got[:2] + got[3:] == data[:2] + data[3:]
    assert m.handle(seg(seq=2200, payload=data), "to_server")[0] is None  # count 1: done
    assert m.behaviours[0].counts == {"segments": 1} and m.events[0]["offset"] == 2


def test_randomised_sequence_numbers_are_shifted_one_way_and_back_the_other():
    m = mangler({"index": 0, "action": "randomise_seq", "directions": ["to_server"]})
    out, _ = m.handle(seg(flags="S", seq=1000, ack=0, mptcp=None), "to_server")
    off = m.flows[(mg.socket.inet_aton(C), 40000, mg.socket.inet_aton(S), 5201)].offsets["to_server"]
    assert off and valid(out).seq == (1000 + off) % 2**32
    out, _ = m.handle(seg(S, C, 5201, 40000, flags="SA", seq=7000, ack=(1001 + off) % 2**32, mptcp=None,
                          sack=[((1500 + off) % 2**32, (1600 + off) % 2**32)]), "to_client")
    tcp = valid(out)
    assert tcp.seq == 7000 and tcp.ack == 1001  # the reply's own sequence untouched, its ack shifted back
    assert dict((o[0], o[1]) for o in tcp.options)["SAck"] == (1500, 1600)
    assert m.behaviours[0].counts == {"seq_to_server": 1, "ack_to_client": 1, "sack_blocks": 1}


def test_mp_prio_is_injected_in_sequence_in_both_forms():
    now = [0.0]
    m = mangler({"index": 0, "action": "inject_mp_prio", "directions": ["to_server"], "after": {"seconds": 1.0},
                 "count": 1, "address_id": 2, "backup": True},
                {"index": 1, "action": "inject_mp_prio", "directions": ["to_server"], "after": {"seconds": 2.0},
                 "count": 1, "address_id": None, "backup": True}, clock=lambda: now[0])
    assert m.handle(seg(seq=1000, ack=5000, payload=b"z" * 10), "to_server") == (None, [])
    assert m.handle(seg(S, C, 5201, 40000, seq=5000, ack=1010, payload=b"q" * 50), "to_client") == (None, [])
    now[0] = 1.2
    _, inject = m.handle(seg(S, C, 5201, 40000, seq=5050, ack=1010, payload=b"q" * 50), "to_client")
    ((pkt, version, dst),) = inject
    tcp = valid(pkt)
    assert version == 4 and dst == mg.socket.inet_aton(S) and IP(pkt).src == C
    # exactly what the server expects next from the client, acking what the client acked last
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, str(tcp.flags)) == (40000, 5201, 1010, 5000, "A")
    assert dict(o for o in tcp.options if o[0] == "Timestamp")["Timestamp"] == (111, 222)
    assert mptcp_kinds(tcp) == [(30, bytes([0x51, 2]))]  # RFC 6824: length 4, B=1, address ID 2
    assert bytes(tcp)[20:].find(bytes([30, 4, 0x51, 2])) >= 0
    now[0] = 2.5
    _, inject = m.handle(seg(S, C, 5201, 40000, seq=5100, ack=1010, payload=b"q" * 50), "to_client")
    tcp = valid(inject[0][0])
    assert mptcp_kinds(tcp) == [(30, bytes([0x51]))]  # RFC 8684: length 3, no address ID
    now[0] = 9
    assert m.handle(seg(seq=1010, ack=5150, payload=b"z"), "to_server")[1] == []  # each once per flow
    assert [b.counts for b in m.behaviours] == [{"flows": 1, "packets_to_server": 1}] * 2


def test_rst_is_injected_both_ways_with_the_exact_sequence_numbers():
    m = mangler({"index": 0, "action": "inject_rst", "directions": ["to_server", "to_client"],
                 "after": {"bytes": 100}, "count": 1})
    m.handle(seg(seq=1000, ack=5000, payload=b"a" * 60), "to_server")
    _, inject = m.handle(seg(S, C, 5201, 40000, seq=5000, ack=1060, payload=b"b" * 60), "to_client")
    assert len(inject) == 2
    to_server, to_client = (valid(p) for p, _, _ in inject)
    assert (to_server.seq, str(to_server.flags)) == (1060, "RA")
    assert (to_client.seq, to_client.ack, to_client.sport) == (5060, 1060, 5201)
    assert m.handle(seg(seq=1060, ack=5060, payload=b"c"), "to_server")[1] == []  # count 1


def test_not_tcp_and_malformed_packets_pass_untouched():
    m = mangler({"index": 0, "action": "randomise_seq", "directions": ["to_server"]})
    from scapy.layers.inet import UDP

    assert m.handle(bytes(IP(src=C, dst=S) / UDP()), "to_server") == (None, [])
    assert m.handle(b"\x45" + bytes(10), "to_server") == (None, [])
    assert m.stats["not_tcp"] == 2
    with pytest.raises(ValueError):
        mg.load_config(json.dumps({"queues": QUEUES, "behaviours": [{"index": 0, "action": "explode",
                                                                       "directions": ["to_server"]}]}))


def test_a_missing_kernel_feature_is_a_capability_error_naming_it():
    from testbed.emulation.functions.middlebox import _missing
    from testbed.errors import CapabilityError

    err = _missing(["iptables", "-w", "-t", "mangle", "-A", "TB_MIDDLEBOX", "-j", "TCPOPTSTRIP"],
                   "iptables: No chain/target/match by that name.")
    assert isinstance(err, CapabilityError) and "TCPOPTSTRIP" in str(err) and "No chain" in str(err)
    assert "MPTCP options" in str(_missing(["nft", "add rule ..."], "Error: syntax error, unexpected option"))
    assert _missing(["iptables", "-N", "TB_MIDDLEBOX"], "iptables: Chain already exists.") is None
