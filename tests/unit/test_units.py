import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.spec import units


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1.5s", 1.5), ("250us", 0.00025), (2, 2.0),
                                               ("0", 0.0), ("1min", 60.0)])
def test_durations(text, seconds):
    assert units.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "bps"), [("10Mbit", 10e6), ("500kbit", 5e5), ("1Gbps", 1e9), ("2.5mbit", 2.5e6)])
def test_rates(text, bps):
    assert units.parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize(("text", "nbytes"), [("20MB", 20_000_000), ("64KiB", 65536), ("1500", 1500), ("1GB", 10**9)])
def test_sizes(text, nbytes):
    assert units.parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["150%", "-5%", "five", "5 parsecs", True, None, [1]])
def test_bad_percent(bad):
    with pytest.raises(units.QuantityError):
        units.parse_percent(bad)


def test_negative_delay_refused():
    with pytest.raises(units.QuantityError, match="negative"):
        units.parse_duration("-20ms")


@pytest.mark.parametrize("value", [0.02, 1.5, 0.00025, 3.0])
def test_duration_round_trip(value):
    assert units.parse_duration(units.format_duration(value)) == pytest.approx(value)


@pytest.mark.parametrize("value", [10e6, 5e5, 1e9, 1234.0])
def test_rate_round_trip(value):
    assert units.parse_rate(units.format_rate(value)) == pytest.approx(value, rel=1e-5)


def test_quantity_prints_with_unit_and_computes_as_number():
    q = units.Quantity(0.02, units.format_duration)
    assert str(q) == "20ms"
    assert q * 2 == pytest.approx(0.04)


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none()))
def test_parsers_fail_only_with_quantity_errors(value):
    for parse in (units.parse_duration, units.parse_rate, units.parse_size, units.parse_percent):
        try:
            parse(value)
        except units.QuantityError:
            pass
