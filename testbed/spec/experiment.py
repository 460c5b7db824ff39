"""Experiment models: which topology, how each node speaks MPTCP, what traffic, what events, what to expect."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.model import Model
from testbed.spec.names import IfName, NodeName, RunName
from testbed.spec.stack import Endpoint, EndpointFlag, StackConfig
from testbed.spec.topology import Impairment
from testbed.spec.units import Duration, Percent, Rate, Size, format_size

Protocol = Literal["mptcp", "tcp"]


class TopologyRef(Model):
    file: str = Field(description="path to the topology, relative to the experiment file")
    set: dict[str, Any] = Field(default_factory=dict, description="template parameters")

    @model_validator(mode="before")
    @classmethod
    def _brief(cls, value: Any) -> Any:
        return {"file": value} if isinstance(value, str) else value


class WorkloadBase(Model):
    name: RunName | None = Field(None, description="defaults to the type, numbered if repeated")
    client: NodeName = "client"
    server: NodeName = "server"
    target: str | None = Field(None, description="server address: 'node:interface' or an IP (default: server's first)")
    port: int = Field(5201, ge=1, le=65535)
    protocol: Protocol = Field("mptcp", description="socket the workload opens (mptcp falls back when refused)")
    concurrent: bool = Field(False, description="start together with the previous workload instead of after it")
    timeout: Duration = Field(60.0, gt=0)
    servers: list[NodeName] = Field(
        default_factory=list, description="bulk/rr: run the server side on each of these nodes instead of `server` "
        "(e.g. a load balancer's backends); the client connects to `target`; the result says which served")
    via: NodeName | None = Field(None, description="node name of a converter or socks node to go through "
                                                   "(bulk and rr): the client asks it to connect to the target")
    expect_error: str | None = Field(
        None, description="this workload must fail, with this error reported by its `via` node (e.g. "
        "destination-unreachable, host-unreachable) or with any error ('any'); its failure is then the pass")


class Abort(Model):
    """End a bulk transfer abruptly part-way: the aborting side closes its socket so that the kernel
    resets the connection instead of closing it in order. Plain TCP sends a RST; upstream Linux MPTCP
    sends MP_FASTCLOSE (RFC 8684 §3.5) when the socket is closed with unread data (since 6.1) or with
    SO_LINGER {on, 0 s} (since 7.1 and its stable backports); otherwise its close is an orderly
    DATA_FIN. The peer must see the reset (ECONNRESET or EPIPE); the workload then counts as complete."""

    after: Size = Field(gt=0, description="payload bytes the aborting side has received (or handed to the kernel, "
                                          "when it sends) before it aborts; less than the workload's size")
    side: Literal["client", "server"] = Field("client", description="the end that aborts (and sends MP_FASTCLOSE)")
    how: Literal["auto", "unread", "linger0", "both"] = Field(
        "auto", description="unread: stop reading and close() once more payload waits unread in the receive "
        "queue (only the receiving side can); linger0: close() with SO_LINGER {on, 0 s}; both; auto: unread "
        "when the aborting side receives the payload, else linger0")


class Bulk(WorkloadBase):
    type: Literal["bulk"]
    size: Size = Field(20_000_000, gt=0)
    direction: Literal["upload", "download"] = "upload"
    abort: Abort | None = Field(None, description="abort the connection part-way instead of finishing the transfer "
                                                  "(e.g. {after: 2MB}: the client resets it after 2 MB)")

    @field_validator("abort")
    @classmethod
    def _abort_fits(cls, abort: Abort | None, info: ValidationInfo) -> Abort | None:
        if abort is None:
            return abort
        size, direction = info.data.get("size"), info.data.get("direction")
        if size is not None and abort.after >= size:
            raise PydanticCustomError("abort", "after ({after}) must be less than the workload's size ({size}): "
                                      "the transfer would end before the abort",
                                      {"after": format_size(abort.after), "size": format_size(size)})
        receiver = "client" if direction == "download" else "server"
        if abort.how in ("unread", "both") and direction is not None and abort.side != receiver:
            raise PydanticCustomError("abort", "how: '{how}' leaves payload unread, but the {side} sends it "
                                      "(direction: {direction}): use linger0, or abort on the {receiver}",
                                      {"how": abort.how, "side": abort.side, "direction": direction,
                                       "receiver": receiver})
        if info.data.get("via"):
            raise PydanticCustomError("abort", "abort does not combine with via: the relay decides how the far "
                                      "end's connection ends")
        if info.data.get("servers"):
            raise PydanticCustomError("abort", "abort does not combine with servers (one server side only)")
        return abort

    def abort_how(self) -> str | None:
        """The abort's `how` with auto resolved (None without an abort)."""
        if self.abort is None:
            return None
        if self.abort.how != "auto":
            return self.abort.how
        receiver = "client" if self.direction == "download" else "server"
        return "unread" if self.abort.side == receiver else "linger0"


class RequestResponse(WorkloadBase):
    type: Literal["rr"]
    requests: int = Field(100, ge=1, le=100_000)
    request_size: Size = 100
    response_size: Size = 1000
    interval: Duration = 0.0
    new_connection: bool = Field(False, description="one connection per request (measures handshakes too)")


class Iperf3(WorkloadBase):
    type: Literal["iperf3"]
    duration: Duration = Field(5.0, gt=0, le=3600)
    reverse: bool = False
    streams: int = Field(1, ge=1, le=16)


class Ping(WorkloadBase):
    type: Literal["ping"]
    count: int = Field(20, ge=1, le=100_000)
    interval: Duration = Field(0.05, ge=0.002)


ProbeName = Literal["v0-capable", "unknown-version", "join-bad-hmac", "mp-prio-address-id", "add-addr-bad-hmac"]


class Probe(WorkloadBase):
    """A packet-level conformance probe (testbed.probes) from the client node against the server node."""

    type: Literal["probe"]
    probe: ProbeName = Field(description="which probe (testbed/probes/conformance.py)")
    speaks: Literal["auto", "v1", "v0", "tcp"] = Field(
        "auto", description="what the server is expected to speak: RFC 8684 (v1), RFC 6824 (v0) or plain tcp; "
                            "auto: read from the server node's kernel (net.mptcp sysctls)")
    timeout: Duration = Field(30.0, gt=0)


Workload = Annotated[Bulk | RequestResponse | Iperf3 | Ping | Probe, Field(discriminator="type")]


class EventBase(Model):
    at: Duration = Field(description="time after the workloads got under way: the first bulk client's connection, else the first workload's start")
    wait_for: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_]+$")],
                   Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="counters ('node.Counter': minimum increase since the workloads started) that must have "
                    "moved before the event fires, however late (at most wait_timeout): e.g. the MP_JOIN an "
                    "MP_PRIO is about, {client.MPTcpExtMPJoinSynAckRx: 1}")
    wait_timeout: Duration = Field(10.0, gt=0, description="how long past `at` the event waits for wait_for")


class LinkEvent(EventBase):
    action: Literal["link_down", "link_up"]
    link: str = Field(description="'node:interface' at one end of the link")


class ImpairmentEvent(EventBase):
    action: Literal["set_impairment"]
    link: str
    direction: Literal["both", "forward", "reverse"] = "both"
    impairment: Impairment


class EndpointAddEvent(EventBase):
    action: Literal["endpoint_add"]
    node: NodeName
    endpoint: Endpoint


class EndpointRemoveEvent(EventBase):
    action: Literal["endpoint_remove"]
    node: NodeName
    interface: IfName


class BackupEvent(EventBase):
    action: Literal["set_backup"]
    node: NodeName
    interface: IfName
    backup: bool = True


Event = Annotated[LinkEvent | ImpairmentEvent | EndpointAddEvent | EndpointRemoveEvent | BackupEvent,
                  Field(discriminator="action")]


class Bound(Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"min": value, "max": value}
        return value


class RateBound(Model):
    min: Rate | None = None
    max: Rate | None = None
    workload: str | None = None


class DurationBound(Model):
    min: Duration | None = None
    max: Duration | None = None


class LatencyExpect(Model):
    workload: str | None = None
    metric: Literal["ttfb", "completion"] = "ttfb"
    p50: DurationBound | None = None
    p95: DurationBound | None = None
    p99: DurationBound | None = None


class PathExpect(Model):
    """Bytes one interface carried (sent + received) within a time window of the workload phase."""

    min_share: Percent | None = Field(None, description="share of all bytes over the node's interfaces")
    max_share: Percent | None = None
    min_bytes: Size | None = None
    max_bytes: Size | None = None
    start: Duration | None = Field(None, description="window start, from when the workloads got under way (as events)")
    end: Duration | None = None
    after_event: int | None = Field(None, ge=0, description="count start and end from when this event (its index "
                                    "in events) had been carried out instead: a loaded emulated guest can take "
                                    "seconds to run the command, and what the kernel did counts from then")


class Compare(Model):
    """`left` is at most `factor` × `right`; metrics are 'workload.metric' (e.g. rr-mptcp.ttfb_p95)."""

    left: str
    right: str
    factor: float = Field(1.0, gt=0)


class PeerExpect(Model):
    """Remote addresses of a node's established TCP sockets (MPTCP subflows included), from the `ss`
    snapshots taken every second while workloads run; entries are 'node:interface' or IP addresses."""

    includes: list[str] = Field(default_factory=list, description="each was seen at least once")
    excludes: list[str] = Field(default_factory=list, description="none was ever seen")


class Expect(Model):
    outcome: Literal["mptcp", "fallback", "failed"] | None = None
    transfer_intact: bool | None = None
    counters: dict[str, Bound] = Field(default_factory=dict,
                                       description="'node.CounterName' (delta over the run) → bounds; a node "
                                                   "pattern such as 'server*' sums the nodes it matches")
    counters_absent: Literal["fail", "skip"] = Field(
        "fail", description="a counter check on a kernel without that counter: 'fail' (it proves nothing, so "
                            "the check fails, and a matrix cell on such a kernel is unsupported) or 'skip' (the "
                            "check is recorded as skipped and the others judge the cell, as the kernel's own "
                            "selftests do)")
    subflows: Bound | None = Field(None, description="joined subflows + 1, from the client's counters")
    goodput: RateBound | None = None
    latency: LatencyExpect | None = None
    paths: dict[str, PathExpect] = Field(default_factory=dict, description="'node:interface' → bytes carried")
    compare: list[Compare] = Field(default_factory=list)
    report: list[str] = Field(default_factory=list,
                              description="metrics ('workload.metric') recorded as findings, never failing")
    latency_bounds: dict[str, DurationBound] = Field(
        default_factory=dict, description="'workload.metric' (e.g. rr-tcp.ttfb_p95) → duration bounds")
    peers: dict[NodeName, PeerExpect] = Field(
        default_factory=dict, description="node → addresses at the far end of its TCP connections and subflows")


class Experiment(Model):
    name: RunName
    description: str = ""
    topology: TopologyRef
    stacks: dict[NodeName, StackConfig] = Field(default_factory=dict,
                                                description="per-node MPTCP config, over the topology's")
    workloads: list[Workload] = Field(min_length=1)
    events: list[Event] = Field(default_factory=list)
    expect: Expect = Field(default_factory=Expect)
    capture: Literal["auto", "on", "off"] | bool = Field(
        "auto", description="pcaps of every host interface; auto: on unless more than 200MB moves")
    sample_interval: Duration = Field(0.1, ge=0.01, le=10, description="interface byte counters period")
    shaping: Literal["auto", "netem", "fallback"] = "auto"
    timeout: Duration = Field(300.0, gt=0, description="the whole run, set-up to teardown")
    seed: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _unique_names(self) -> Experiment:
        seen: dict[str, int] = {}
        for w in self.workloads:
            seen[w.type] = seen.get(w.type, 0) + 1
        names = [w.name for w in self.workloads if w.name]
        if len(names) != len(set(names)):
            raise PydanticCustomError("names", "two workloads have the same name")
        return self

    def workload_names(self) -> list[str]:
        counts: dict[str, int] = {}
        out = []
        for w in self.workloads:
            if w.name:
                out.append(w.name)
                continue
            counts[w.type] = counts.get(w.type, 0) + 1
            out.append(w.type if counts[w.type] == 1 else f"{w.type}-{counts[w.type]}")
        return out


__all__ = ["Experiment", "EndpointFlag", "Workload", "Event"]
