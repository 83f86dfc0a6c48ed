"""The service's time, read the same on every Python a Space runs (issue 11, finding 9), and how far its clock may be.

Finding 9: on Python 3.10 ``datetime.fromisoformat`` reads neither the escrow service's ``…Z`` times
nor fractions other than 3 or 6 digits, so every paid call was refused there. ``parse_service_time``
reads them itself; one test runs it under a real Python 3.10 (when one is installed).

``ServiceClock`` bounds ``service time - gate time`` from ``Date`` headers and hold expiries; it is
tested here with a fake gate clock.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
from email.utils import formatdate
from pathlib import Path

import pytest

from escrow.store import iso
from gate._clock import ServiceClock, parse_service_time

NEW_YEAR = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CLOCK_FILE = Path(__file__).resolve().parents[2] / "gate" / "_clock.py"


# -- parse_service_time ---------------------------------------------------------------------------


@pytest.mark.parametrize("moment", [NEW_YEAR, NEW_YEAR + 0.001, NEW_YEAR + 59.999, NEW_YEAR + 86_399.5,
                                    1_700_000_000.123, 4_102_444_799.999, 0.0])
def test_the_escrows_own_format_reads_back(moment):
    text = iso(moment)
    assert text.endswith("Z") and "." in text
    assert parse_service_time(text) == pytest.approx(math.floor(moment * 1000) / 1000, abs=1e-6)


@pytest.mark.parametrize("text, expected", [
    ("2026-01-01T00:00:00Z", NEW_YEAR),
    ("2026-01-01T00:00:00.000Z", NEW_YEAR),
    ("2026-01-01 00:00:00Z", NEW_YEAR),
    ("2026-01-01T00:00:00", NEW_YEAR),  # naive: UTC
    ("2026-01-01T00:00:00.5", NEW_YEAR + 0.5),
    ("2026-01-01T01:00:00+01:00", NEW_YEAR),
    ("2026-01-01T01:00:00+0100", NEW_YEAR),
    ("2025-12-31T18:30:00-05:30", NEW_YEAR),
    ("2026-01-01T00:00:00+00:00", NEW_YEAR),
    ("  2026-01-01T00:00:00Z\n", NEW_YEAR),
])
def test_zones_and_offsets(text, expected):
    assert parse_service_time(text) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("digits", range(1, 10))
def test_one_to_nine_fraction_digits(digits):
    fraction = "123456789"[:digits]
    value = parse_service_time(f"2026-01-01T00:00:07.{fraction}Z")
    assert value == pytest.approx(NEW_YEAR + 7 + int(fraction) / 10**digits, abs=1e-6)
    assert parse_service_time(f"2026-01-01T00:00:07.{fraction}") == value  # naive reads the same


@pytest.mark.parametrize("garbage", [
    "", " ", "yesterday", "2026-01-01", "2026-01-01T00:00Z", "2026-01-01T00:00:00.Z",
    "2026-01-01T00:00:00.1234567890Z",  # 10 fraction digits
    "2026-01-01T00:00:00Zjunk", "junk2026-01-01T00:00:00Z", "2026-01-01T00:00:00+1", "2026-01-01T00:00:00 UTC",
    "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # full-width digits
    "2026-01-01T00:00:00\u200bZ",
])
def test_garbage_raises_value_error(garbage):
    with pytest.raises(ValueError):
        parse_service_time(garbage)


@pytest.mark.parametrize("not_text", [None, 1_767_225_600, 1.5, b"2026-01-01T00:00:00Z", ["2026-01-01T00:00:00Z"]])
def test_only_strings_are_times(not_text):
    with pytest.raises(ValueError):
        parse_service_time(not_text)


def _python_310() -> str | None:
    candidates = [shutil.which("python3.10")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for candidate in filter(None, candidates):
        try:
            answer = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0 and answer.stdout.strip() == "True":
            return candidate
    return None


def test_a_real_python_310_reads_the_services_times_the_same():
    """gate/_clock.py loaded by a Python 3.10 process (stdlib only), given the escrow's own times."""
    python = _python_310()
    if python is None:
        pytest.skip("no Python 3.10 installed")
    texts = [iso(NEW_YEAR + 12.345), "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5Z", "2026-01-01T01:00:00+01:00",
             "2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00"]
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('service_clock', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(json.dumps([module.parse_service_time(t) for t in json.loads(sys.argv[2])]))\n"
    )
    answer = subprocess.run([python, "-c", script, str(CLOCK_FILE), json.dumps(texts)],
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == [parse_service_time(t) for t in texts]


# -- ServiceClock ---------------------------------------------------------------------------------


class GateClock:
    """The gate's clock, moved by the test."""

    def __init__(self, now: float = NEW_YEAR):
        self.value = now

    def __call__(self) -> float:
        return self.value


def date(service_time: float) -> str:
    return formatdate(service_time, usegmt=True)


def test_without_a_date_the_service_may_be_the_assumed_skew_either_way():
    gate = GateClock()
    clock = ServiceClock(gate)
    assert clock.bounds() == (-10.0, 10.0)
    assert clock.earliest_local(gate() + 60) == gate() + 50
    assert not clock.surely_past(gate() - 9) and clock.surely_past(gate() - 10)
    assert ServiceClock(gate, assumed_skew_s=3).bounds() == (-3.0, 3.0)
    with pytest.raises(ValueError):
        ServiceClock(gate, assumed_skew_s=-1)


@pytest.mark.parametrize("skew", [-5.0, 0.0, 5.0, 3600.0])
def test_a_date_header_bounds_the_offset_within_its_second(skew):
    gate = GateClock(NEW_YEAR + 0.25)
    clock = ServiceClock(gate)
    service_now = gate() + skew
    clock.observe_date(date(service_now), gate(), gate())  # an instant answer
    low, high = clock.bounds()
    assert low <= skew <= high and high - low == pytest.approx(1.0)
    # an expiry 10 s ahead on the service's clock: reached on the gate's clock no sooner than the bound says
    expiry = service_now + 10
    assert clock.earliest_local(expiry) <= gate() + 10
    assert clock.earliest_local(expiry) >= gate() + 9
    assert not clock.surely_past(expiry)
    start = gate()
    gate.value = start + 10 + (skew - low) - 0.01  # the service may not have reached the expiry yet
    assert not clock.surely_past(expiry)
    gate.value = start + 10 + (skew - low) + 0.01
    assert clock.surely_past(expiry)
    assert gate() - start <= 11.01  # surely past at most the Date's resolution after it really is


def test_a_slow_answer_widens_the_bounds_by_its_round_trip():
    gate = GateClock(NEW_YEAR)
    clock = ServiceClock(gate)
    clock.observe_date(date(NEW_YEAR + 5), NEW_YEAR, NEW_YEAR + 2)  # sent at 0, answered 2 s later
    low, high = clock.bounds()
    assert (low, high) == (pytest.approx(3.0), pytest.approx(6.0))
    clock.observe_date(date(NEW_YEAR + 5), NEW_YEAR, NEW_YEAR)  # a quick one narrows it
    assert clock.bounds() == (pytest.approx(5.0), pytest.approx(6.0))


@pytest.mark.parametrize("header, sent, received", [
    (None, 0.0, 0.0), ("", 0.0, 0.0), ("not a date", 0.0, 0.0), ("Thu, 99 Foo 2026 00:00:00 GMT", 0.0, 0.0),
    (date(NEW_YEAR + 100), 1.0, 0.0),  # answered before it was sent: ignored
])
def test_unusable_observations_are_ignored(header, sent, received):
    gate = GateClock()
    clock = ServiceClock(gate)
    clock.observe_date(date(NEW_YEAR + 5), NEW_YEAR, NEW_YEAR)
    before = clock.bounds()
    clock.observe_date(header, NEW_YEAR + sent, NEW_YEAR + received)
    assert clock.bounds() == before


def test_a_stepped_clock_starts_the_bounds_again():
    gate = GateClock()
    clock = ServiceClock(gate)
    clock.observe_date(date(NEW_YEAR + 5), NEW_YEAR, NEW_YEAR)
    assert clock.bounds()[0] == pytest.approx(5.0)
    gate.value += 100  # the gate's clock was stepped 100 s ahead; the service's moved 1 s
    clock.observe_date(date(NEW_YEAR + 6), gate(), gate())
    low, high = clock.bounds()
    assert low == pytest.approx(-94.0) and high == pytest.approx(-93.0)
    assert clock.earliest_local(NEW_YEAR + 16) == pytest.approx(gate() + 9.0)


def test_bounds_widen_as_clocks_may_drift():
    gate = GateClock()
    clock = ServiceClock(gate)
    clock.observe_date(date(NEW_YEAR + 5), NEW_YEAR, NEW_YEAR)
    gate.value += 10_000  # no answer for almost three hours: 200 ppm of it either way
    low, high = clock.bounds()
    assert low == pytest.approx(5.0 - 2.0) and high == pytest.approx(6.0 + 2.0)


def test_a_hold_expiry_is_a_lower_bound_only():
    gate = GateClock()
    clock = ServiceClock(gate, assumed_skew_s=10)
    # a hold of TTL 120 answered at gate time 0 expiring at service time 125: the service read >= 5 then
    clock.observe_at_least(NEW_YEAR + 125 - 120, NEW_YEAR)
    low, high = clock.bounds()
    assert low == pytest.approx(5.0) and high == pytest.approx(15.0)  # the upper side is still assumed
    clock.observe_date(date(NEW_YEAR + 6), NEW_YEAR, NEW_YEAR)
    assert clock.bounds() == (pytest.approx(6.0), pytest.approx(7.0))
    clock.observe_at_least(NEW_YEAR + 20, NEW_YEAR)  # contradicts the Date bound: back to the assumed skew above
    low, high = clock.bounds()
    assert low == pytest.approx(20.0) and high == pytest.approx(30.0)


def test_skew_costs_margin_never_money():
    """Whatever the skew (±5 s), the gate's deadline for a service expiry comes no later than the expiry."""
    for skew in (-5.0, -0.5, 0.0, 0.5, 5.0):
        gate = GateClock(NEW_YEAR + 0.7)
        clock = ServiceClock(gate)
        clock.observe_date(date(gate() + skew), gate() - 0.05, gate() + 0.05)
        expiry = gate() + skew + 20  # service clock
        local = clock.earliest_local(expiry)
        # at gate time `local` the service's clock reads local + skew, never past the expiry
        assert local + skew <= expiry
        assert expiry - (local + skew) <= 1.2  # and the margin lost is about the Date's resolution
