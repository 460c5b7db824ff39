"""The `middlebox` node kind: a forwarding node that interferes with MPTCP in chosen ways.

A middlebox forwards like a router and applies its `behaviours` to the TCP segments it forwards.
Each behaviour names an `action` and the `direction` it applies to:

* `to_server`: segments travelling the way the subflow's SYN went (from the side that opened the
  TCP connection or MPTCP subflow, normally the client, to the side that accepted it);
* `to_client`: the replies (SYN/ACKs, and everything else the accepting side sends);
* `both` (default).

Directions follow each TCP connection's own SYN (conntrack's original/reply direction), so a
behaviour means the same thing whichever interfaces the middlebox has and however a topology names
them. Actions:

==========================  =================================================================
strip_mptcp                 remove TCP option 30 (MPTCP): `when: syn` (SYN and SYN/ACK; with a
                            direction, only the SYN or only the SYN/ACK), `all` (every segment),
                            `after_handshake` (every MPTCP option but MP_CAPABLE/MP_JOIN on
                            non-SYN segments, optionally only `after` a subflow carried N bytes)
drop_add_addr               drop segments that carry ADD_ADDR (`count`: only the first N)
drop_mp_join_syn            drop SYNs (and SYN/ACKs) that carry MP_JOIN
blackhole_mp_capable_syn    drop SYNs (and SYN/ACKs) that carry MP_CAPABLE
inject_rst                  send a RST on a subflow, spoofed, in sequence, `after` a trigger
corrupt_payload             flip payload bits (TCP checksum recomputed, so only MPTCP's DSS
                            checksum can notice)
randomise_seq               shift TCP sequence numbers by a random offset per subflow (and the
                            acknowledgement and SACK numbers coming back)
inject_mp_prio              send an MP_PRIO on a subflow `after` a trigger: with `address_id`,
                            the RFC 6824 form (length 4) naming another subflow's address;
                            without, the RFC 8684 form (length 3) for the subflow it is sent on
==========================  =================================================================

Drops and option stripping at handshake are nftables and iptables rules; the rest runs in a
userspace NFQUEUE mangler (scapy builds the injected packets).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.model import Model
from testbed.spec.nodebase import NodeBase
from testbed.spec.units import Duration, Percent, Size

Direction = Literal["both", "to_server", "to_client"]
DIRECTIONS: tuple[str, ...] = ("to_server", "to_client")


class Trigger(Model):
    """When a behaviour acts on a subflow: once it carried `bytes` of payload (both directions),
    `packets` segments, or `seconds` after its first segment (on the first segment after that)."""

    bytes: Size | None = Field(None, description="payload bytes the subflow carried, both directions")
    packets: int | None = Field(None, ge=1, le=100_000_000, description="segments the subflow carried")
    seconds: Duration | None = Field(None, description="time since the subflow's first segment")

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [k for k in ("bytes", "packets", "seconds") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError("trigger", "give exactly one of bytes, packets or seconds "
                                                 "(for example after: {bytes: 1MB})")
        return self

    def describe(self) -> dict[str, float]:
        return {k: v for k in ("bytes", "packets", "seconds") if (v := getattr(self, k)) is not None}


class BehaviourBase(Model):
    direction: Direction = Field("both", description="to_server (the way the subflow's SYN went), "
                                                     "to_client (the replies) or both")

    def directions(self) -> tuple[str, ...]:
        return DIRECTIONS if self.direction == "both" else (self.direction,)


class StripMptcp(BehaviourBase):
    action: Literal["strip_mptcp"]
    when: Literal["syn", "all", "after_handshake"] = Field(
        "all", description="syn: SYN and SYN/ACK only; all: every segment; after_handshake: every "
                           "option but MP_CAPABLE/MP_JOIN on segments without SYN")
    after: Size | None = Field(None, description="after_handshake only: start once the subflow carried "
                                                 "this much payload (both directions)")

    @field_validator("after")
    @classmethod
    def _after_only_after_handshake(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("when", "all") != "after_handshake":
            raise PydanticCustomError("after", "'after' applies only to when: after_handshake")
        return value


class _Drop(BehaviourBase):
    count: int | None = Field(None, ge=1, le=1_000_000, description="drop only the first N (default: all)")
    probability: Percent | None = Field(None, gt=0, le=100, description="drop each with this probability")


class DropAddAddr(_Drop):
    action: Literal["drop_add_addr"]


class DropMpJoinSyn(_Drop):
    action: Literal["drop_mp_join_syn"]


class BlackholeMpCapableSyn(_Drop):
    action: Literal["blackhole_mp_capable_syn"]


class InjectRst(BehaviourBase):
    action: Literal["inject_rst"]
    after: Trigger = Field(description="when, per subflow: bytes, packets or seconds")
    count: int = Field(1, ge=1, le=1000, description="subflows to reset in all")


class CorruptPayload(BehaviourBase):
    action: Literal["corrupt_payload"]
    after: Size = Field(0, description="payload bytes a subflow carries in this direction before the first "
                                       "corrupted segment")
    count: int | None = Field(1, ge=1, le=1_000_000, description="segments to corrupt in all (null: no limit)")
    probability: Percent | None = Field(None, gt=0, le=100, description="corrupt each eligible segment "
                                                                         "with this probability")
    offset: int = Field(0, ge=0, le=65535, description="byte of the segment's payload to change")
    xor: int = Field(0xFF, ge=1, le=255, description="bits flipped in that byte")


class RandomiseSeq(BehaviourBase):
    action: Literal["randomise_seq"]


class InjectMpPrio(BehaviourBase):
    action: Literal["inject_mp_prio"]
    after: Trigger = Field(description="when, per subflow: bytes, packets or seconds")
    address_id: int | None = Field(None, ge=0, le=255,
                                   description="RFC 6824 form (length 4) naming this address ID; "
                                               "omit for the RFC 8684 form (length 3)")
    backup: bool = Field(True, description="the B flag")
    count: int = Field(1, ge=1, le=1000, description="MP_PRIOs to send in all (one per subflow)")


Behaviour = Annotated[StripMptcp | DropAddAddr | DropMpJoinSyn | BlackholeMpCapableSyn | InjectRst |
                      CorruptPayload | RandomiseSeq | InjectMpPrio, Field(discriminator="action")]

ACTIONS: tuple[str, ...] = ("strip_mptcp", "drop_add_addr", "drop_mp_join_syn", "blackhole_mp_capable_syn",
                            "inject_rst", "corrupt_payload", "randomise_seq", "inject_mp_prio")
#: Behaviours that need the userspace mangler (the rest are kernel rules).
MANGLER_ACTIONS: tuple[str, ...] = ("inject_rst", "corrupt_payload", "randomise_seq", "inject_mp_prio")


def uses_mangler(b: Any) -> bool:
    return b.action in MANGLER_ACTIONS or (b.action == "strip_mptcp" and b.when == "after_handshake")


class Middlebox(NodeBase):
    """A forwarding node that applies `behaviours` to the TCP segments it forwards: drops first (on
    segments as they arrived), then option stripping at handshake, then the mangler's behaviours in
    list order."""

    kind: Literal["middlebox"]
    behaviours: list[Behaviour] = Field(default_factory=list, max_length=32,
                                        description="what the middlebox does to forwarded TCP segments")

    @field_validator("behaviours", mode="before")
    @classmethod
    def _brief(cls, value: Any) -> Any:
        """`- randomise_seq` is short for `- {action: randomise_seq}`."""
        if isinstance(value, list):
            return [{"action": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("behaviours")
    @classmethod
    def _combinations(cls, behaviours: list[Any]) -> list[Any]:
        for action, what in (("randomise_seq", "one sequence offset per direction"),
                             ("strip_mptcp", "one kind of stripping per direction")):
            seen: dict[str, int] = {}
            for i, b in enumerate(behaviours):
                if b.action != action:
                    continue
                overlap = sorted(d for d in b.directions() if d in seen)
                if overlap:
                    raise PydanticCustomError(
                        "combination", f"behaviours [{seen[overlap[0]]}] and [{i}] are both {action} for "
                                       f"{' and '.join(overlap)}: {what}")
                seen.update({d: i for d in b.directions()})
        return behaviours

    def check(self, name: str, resolved: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-checks against the resolved topology (the spec loader reports them with positions)."""
        count = len(resolved.interfaces.get(name, []))
        if count < 2:
            return [((), f"a middlebox forwards between its links: it needs at least two, '{name}' has {count}")]
        return []


MODEL = Middlebox
