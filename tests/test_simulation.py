"""1,000 seeded schedules of the gate against the real ledger (tests/simulate.py), two processes at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = int(os.environ.get("GATE_SIM_SCHEDULES", "1000"))
SEED = int(os.environ.get("GATE_SIM_SEED", "20261201"))
WORKERS = 2


@pytest.mark.slow
def test_every_result_handed_out_is_paid_exactly_once_across_seeded_schedules():
    share = -(-SCHEDULES // WORKERS)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.simulate", "--seed", str(SEED + i * share), "--schedules", str(share)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(WORKERS)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    report = "\n".join(outputs)
    assert all(run.returncode == 0 for run in runs), report[-20000:]
    assert report.count(f"{share} passed, 0 failed") == WORKERS, report[-5000:]


def test_a_schedule_replays_identically():
    from tests.simulate import run_one

    first, again = run_one(SEED), run_one(SEED)
    assert (first.calls, first.served, first.problems) == (again.calls, again.served, again.problems)
    assert first.calls > 0 and not first.problems
