"""Sharding a matrix: cells balanced over hosts by expected cost (testbed.provision.shard_plan)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from testbed.provision.shard_plan import DEFAULT_SECONDS, GUEST_SECONDS, NOT_RUN_SECONDS, assign, estimate


def test_every_cell_once_in_order_and_balanced():
    costs = {f"s{i}/a/b": c for i, c in enumerate([30, 10, 10, 10, 20, 5, 5, 0.1, 40])}
    out = assign(costs, ["h1", "h2", "h3"])
    keys = list(itertools.chain.from_iterable(out.values()))
    assert sorted(keys) == sorted(costs) and len(keys) == len(set(keys))
    order = list(costs)
    for shard in out.values():  # each host runs its cells in the order a local run lists them
        assert shard == sorted(shard, key=order.index)
    loads = sorted(sum(costs[k] for k in shard) for shard in out.values())
    assert loads[-1] - loads[0] <= max(costs.values()) and loads[-1] <= 45  # 130.1 s over 3: LPT gives 45/45/40.1


def test_one_host_gets_everything_and_no_host_is_an_error():
    assert assign({"a": 1.0, "b": 2.0}, ["only"]) == {"only": ["a", "b"]}
    assert assign({}, ["h1", "h2"]) == {"h1": [], "h2": []}
    with pytest.raises(ValueError):
        assign({"a": 1.0}, [])


def test_estimates_prefer_what_the_cell_took_last_time():
    cell = lambda key, status="run", guests=0: SimpleNamespace(  # noqa: E731
        key=key, expectation=SimpleNamespace(status=status), guests=[object()] * guests)
    assert estimate(cell("x"), {"x": 12.5}) == 12.5
    assert estimate(cell("x"), {}) == DEFAULT_SECONDS
    assert estimate(cell("x", guests=2), {}) == DEFAULT_SECONDS + 2 * GUEST_SECONDS
    assert estimate(cell("x", status="unavailable"), {}) == NOT_RUN_SECONDS
