"""The gate's hot path with calls 20 ms apart (issue 11): bench_gate's paced rows, alone and repeatable.

The paid function sleeps 20 ms (a stand-in for a model's forward pass), one thread calls it
sequentially, and "added" is each mode's percentile minus the bare function's (as in
bench/bench_gate.py). Modes:

- bare:        the function alone (the baseline);
- lease:       EscrowGate(settlement="lease"), i.e. Lease(): the journal in memory (bench_gate's row);
- lease_file:  EscrowGate(settlement=Lease(journal=path)): the journal a SQLite file (WAL,
               synchronous=NORMAL), as the Space runs it;
- per_call:    EscrowGate(settlement="per_call"): two round trips per call (for scale).

`--timers` adds, per lease mode, the p50 of perf_counter timers wrapped around the steps of one
call (Cashier.reserve, LeaseSettlement.reserve, Run.settle, LeaseSettlement.settle,
Journal.add_charge), and how many times the flusher ran during the measured calls. The timers are a
separate pass (`lease+timers`, `lease_file+timers`), so the plain rows carry no wrapper.
`--busy` spends the 20 ms spinning on the CPU instead of sleeping (a model's forward pass keeps the
CPU busy; a sleep lets it go idle, and the first microseconds after an idle wake-up are slow here).
`--sqlite` adds a microbenchmark of the journal's one insert (the same INSERT on the same schema),
back to back vs after a 20 ms sleep, in memory vs a WAL file with synchronous=NORMAL.

The script only uses names that exist both before and after the lease rework (commit 532d33d), so
it can be copied into a worktree of 7ba78ee to measure the code before it in the same session.

`python -m bench.bench_hotpath [--calls N] [--latency-ms N] [--timers] [--busy] [--sqlite] [--modes a,b]`
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from bench._common import escrow_service, load_average, percentile

PACED_WORK_MS = 20
PRICE = Decimal("0.001")
WARMUP_CALLS = 5
ESCROW_MICRO = 10**10
ALL_MODES = ("bare", "lease", "lease_file", "per_call")


BUSY = False  # --busy: the 20 ms are spent spinning on the CPU (like a model's forward pass), not sleeping


def paced_work(text: str) -> str:
    if BUSY:
        until = time.perf_counter() + PACED_WORK_MS / 1000
        while time.perf_counter() < until:
            pass
    else:
        time.sleep(PACED_WORK_MS / 1000)
    return text[::-1]


class Timers:
    """perf_counter timers around methods, by label; installed for one pass, then removed."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._undo: list[tuple[type, str, object]] = []

    def wrap(self, cls: type, name: str, label: str) -> None:
        original = vars(cls).get(name)
        if original is None:
            return
        samples = self.samples[label]

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - started)

        setattr(cls, name, timed)
        self._undo.append((cls, name, original))

    def count(self, cls: type, name: str, label: str) -> None:
        """Count calls (the flusher's passes), timing them too."""
        self.wrap(cls, name, label)

    def remove(self) -> None:
        for cls, name, original in reversed(self._undo):
            setattr(cls, name, original)
        self._undo.clear()

    def reset(self) -> None:
        for samples in self.samples.values():
            samples.clear()


def _install_timers() -> Timers:
    from gate import _flow, _journal, _lease

    timers = Timers()
    timers.wrap(_flow.Cashier, "reserve", "Cashier.reserve")
    timers.wrap(_lease.LeaseSettlement, "reserve", "  LeaseSettlement.reserve")
    timers.wrap(_flow.Run, "settle", "Run.settle")
    timers.wrap(_lease.LeaseSettlement, "settle", "  LeaseSettlement.settle")
    timers.wrap(_journal.Journal, "add_charge", "    Journal.add_charge")
    timers.wrap(_lease.LeaseSettlement, "_receipt", "    LeaseSettlement._receipt")
    if "new_charge_id" in vars(_lease):  # a module function that settle looks up at each call
        original = _lease.new_charge_id
        samples = timers.samples["    new_charge_id"]

        def timed_charge_id():
            started = time.perf_counter()
            try:
                return original()
            finally:
                samples.append(time.perf_counter() - started)

        _lease.new_charge_id = timed_charge_id
        timers._undo.append((_lease, "new_charge_id", original))
    # the flusher's pass: `_flush` after the rework, `flush` before it (both exist after; count both)
    timers.count(_lease.LeaseSettlement, "_flush", "flusher passes (_flush)")
    timers.count(_lease.LeaseSettlement, "flush", "flusher passes (flush)")
    return timers


def _gated(market, escrow_id: str, mode: str, journal_dir: Path):
    from gate import EscrowGate, Lease, PerCall

    settlement: object
    if mode == "lease":
        settlement = "lease"
    elif mode == "lease_file":
        settlement = Lease(journal=journal_dir / f"journal-{escrow_id}.sqlite")
    else:
        settlement = "per_call"
    gate = EscrowGate(market.url, market.seller.api_key, seller_id=market.seller.agent_id, settlement=settlement)
    paid = gate.paid(PerCall(PRICE), reason="bench call")(paced_work)
    return (lambda text: paid(text, escrow_id=escrow_id)), gate.close


def _measure(market, mode: str, escrow_id: str, calls: int, journal_dir: Path, timers: bool) -> dict:
    base = mode.removesuffix("+timers")
    if base == "bare":
        call, close = paced_work, (lambda: None)
    else:
        call, close = _gated(market, escrow_id, base, journal_dir)
    installed = _install_timers() if timers else None
    try:
        for _ in range(WARMUP_CALLS):
            call("warm up")
        if installed:
            installed.reset()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call("I love this!")
            samples.append(time.perf_counter() - started)
        steps = {label: list(values) for label, values in installed.samples.items()} if installed else {}
    finally:
        close()
        if installed:
            installed.remove()
    return {"samples": samples, "steps": steps}


def run(modes: list[str], calls: int, latency_ms: int, timers: bool) -> list[dict]:
    plan = list(modes)
    if timers:
        plan += [f"{mode}+timers" for mode in modes if mode.startswith("lease")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp, \
            escrow_service(latency_ms, escrows=len(plan), amount_micro=ESCROW_MICRO) as market:
        measured = {}
        for index, mode in enumerate(plan):
            n = min(calls, 150) if mode == "per_call" else calls
            measured[mode] = _measure(market, mode, market.escrow_ids[index], n, Path(tmp), mode.endswith("+timers"))
    bare = measured.get("bare")
    bare_p = {q: percentile(bare["samples"], q) for q in (50, 90, 99)} if bare else {50: 0.0, 90: 0.0, 99: 0.0}
    for mode, result in measured.items():
        samples = result["samples"]
        row = {"mode": mode, "calls": len(samples)}
        for q in (50, 90, 99):
            row[f"p{q}_ms"] = percentile(samples, q) * 1e3
            row[f"added_p{q}_ms"] = (percentile(samples, q) - bare_p[q]) * 1e3
        row["steps"] = {label: (len(values), percentile(values, 50) * 1e3 if values else 0.0,
                                percentile(values, 90) * 1e3 if values else 0.0)
                        for label, values in result["steps"].items()}
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<18} {'calls':>5}  {'p50 ms':>8}  {'added p50':>9}  {'added p90':>9}  {'added p99':>9}"]
    for row in rows:
        bare = row["mode"] == "bare"
        added = ["-" if bare else f"{row[f'added_p{q}_ms']:.3f}" for q in (50, 90, 99)]
        lines.append(f"{row['mode']:<18} {row['calls']:>5}  {row['p50_ms']:>8.3f}  {added[0]:>9}  {added[1]:>9}  {added[2]:>9}")
    for row in rows:
        if row["steps"]:
            lines.append(f"  steps of {row['mode']} (count, p50 ms, p90 ms):")
            for label, (count, p50, p90) in row["steps"].items():
                lines.append(f"    {label:<32} {count:>5}  {p50:>8.4f}  {p90:>8.4f}")
    return "\n".join(lines)


_SCHEMA = """CREATE TABLE IF NOT EXISTS charges (
    charge_id TEXT PRIMARY KEY, hold_id TEXT NOT NULL, escrow_id TEXT NOT NULL,
    amount_micro INTEGER NOT NULL, created_at REAL NOT NULL, capture_key TEXT)"""
_INSERT = "INSERT INTO charges (charge_id, hold_id, escrow_id, amount_micro, created_at) VALUES (?, ?, ?, ?, ?)"


def _paced_rows(label: str, step, n: int) -> list[str]:
    """``step()`` timed ``n`` times back to back, then ``n`` times 20 ms apart: one table row each."""
    rows = []
    for pace_label, pause in (("back to back", 0.0), ("20 ms apart", PACED_WORK_MS / 1000)):
        samples = []
        for _ in range(n):
            if pause:
                time.sleep(pause)
            started = time.perf_counter()
            step()
            samples.append(time.perf_counter() - started)
        rows.append(f"{label:<22} {pace_label:<14} {percentile(samples, 50) * 1e3:>8.4f}  "
                    f"{percentile(samples, 90) * 1e3:>8.4f}")
    return rows


def sqlite_micro(n: int = 200) -> str:
    """The journal's insert alone: autocommit INSERT, in memory vs WAL file (NORMAL), back to back vs 20 ms apart."""
    import uuid

    def control() -> None:  # a fixed bit of pure Python, no SQLite: a uuid4 hex and a dict round trip
        d = {"id": uuid.uuid4().hex}
        d.update(amount=1000, at=time.time())

    lines = [f"{'journal':<22} {'pace':<14} {'p50 ms':>8}  {'p90 ms':>8}"]
    lines += _paced_rows("(control: no sqlite)", control, n)
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        for label, target, pragmas in (
            ("memory", ":memory:", ()),
            ("file WAL NORMAL", str(Path(tmp) / "a.sqlite"), ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")),
            ("file WAL OFF", str(Path(tmp) / "b.sqlite"), ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=OFF")),
        ):
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            for pragma in pragmas:
                db.execute(pragma)
            db.execute(_SCHEMA)
            lines += _paced_rows(
                label, lambda: db.execute(_INSERT, (f"chg_{uuid.uuid4().hex}", "hld_x", "esc_x", 1000, time.time())), n
            )
            db.close()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per mode (per_call: at most 150)")
    parser.add_argument("--latency-ms", type=int, default=20, help="the escrow service's latency")
    parser.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated, of {', '.join(ALL_MODES)}")
    parser.add_argument("--timers", action="store_true", help="a timed pass per lease mode (steps of one call)")
    parser.add_argument("--busy", action="store_true", help="spin for the 20 ms instead of sleeping")
    parser.add_argument("--sqlite", action="store_true", help="the journal insert alone, too")
    args = parser.parse_args(argv)
    global BUSY
    BUSY = args.busy
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(ALL_MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    print(f"gate hot path, calls {PACED_WORK_MS} ms apart ({'spinning' if BUSY else 'sleeping'}), escrow {args.latency_ms} ms away; "
          f"load average {load_average()}", flush=True)
    print(format_table(run(modes, args.calls, args.latency_ms, args.timers)), flush=True)
    if args.sqlite:
        print(sqlite_micro(), flush=True)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
