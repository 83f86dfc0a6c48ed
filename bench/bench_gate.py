"""Gate overhead: what paying for a call adds to it, with the escrow service 0, 20 and 100 ms away.

For each latency a `python -m escrow serve --latency-ms N` subprocess stands in for a remote
escrow service (the sleep is before each request, so one request costs at least N ms). The same
trivial function is called sequentially from one thread:

- bare:      the function itself (the baseline whose time is subtracted);
- seed:      the seed Space's pattern: GET the escrow, then POST deduct, every call (requests);
- per_call:  EscrowGate(settlement="per_call"): a hold opened and captured per call;
- lease:     EscrowGate(settlement="lease"): one hold serves many calls, captured in batches.

Back-to-back trivial calls use up a 50-call lease in a few milliseconds, faster than the next
hold can be opened 100 ms away, so some calls wait for it (the "slow" column counts them). The
bare and lease rows are measured again with a function that takes 20 ms (about a model's
forward pass), which is the pace at which the lease is meant to renew ahead of need. The lease
rows use at least 500 calls (they are cheap) so their request count is a steady-state one.

Added latency = the mode's percentile minus the bare function's percentile. Escrow requests
per paid call are counted, not estimated: a counting wrapper around the send() of the
requests.Session adapter that the gate (or the seed pattern) uses, over the measured calls
plus the gate's close() (which captures what the measured calls still owe). Warm-up calls
(the first GET /me, the escrow lookup, the first hold) are made before and not counted.

`python -m bench.bench_gate [--short]` prints the table; `run(short)` returns its rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import requests

from bench._common import Market, RequestCounter, banner, escrow_service, percentile

LATENCIES_MS = (0, 20, 100)
MODES = ("bare", "seed", "per_call", "lease")
PACED_MODES = ("bare", "lease")  # again with a function that takes PACED_WORK_MS, like a model
PACED_WORK_MS = 20
LEASE_MIN_CALLS = 500  # lease calls are cheap: more of them for a steady-state request count
SLOW_MS = 1.0  # a call whose added latency is above this counts as slow
PRICE = Decimal("0.001")
WARMUP_CALLS = 5
ESCROW_MICRO = 10**10  # 10,000 USDC per escrow: never the limit here


def work(text: str) -> str:
    """The paid function: trivial on purpose, so that what is measured is the gate."""
    return text[::-1]


def paced_work(text: str) -> str:
    """A function that takes PACED_WORK_MS (a stand-in for a model's forward pass), so calls come at a model's pace."""
    time.sleep(PACED_WORK_MS / 1000)
    return text[::-1]


def _timed(call: Callable[[], object], calls: int, deadline: float) -> list[float]:
    """Seconds per call, for at most `calls` calls and until `deadline` (monotonic)."""
    samples = []
    for _ in range(calls):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _seed_pattern(market: Market, escrow_id: str, fn: Callable[[str], str]):
    """The seed Space's way: GET the escrow (check seller, status, remaining), then deduct; then run."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {market.seller.api_key}"
    counter = RequestCounter().attach(session)
    body = json.dumps({"amount_usdc": f"{PRICE:f}", "reason": "bench call"})

    def paid(text: str) -> str:
        escrow = session.get(f"{market.url}/escrow/{escrow_id}", timeout=10)
        facts = escrow.json(parse_float=Decimal)
        if escrow.status_code != 200 or facts["status"] != "active" or facts["seller_id"] != market.seller.agent_id:
            raise RuntimeError(f"escrow unusable: {escrow.status_code}")
        if Decimal(str(facts["remaining_usdc"])) < PRICE:
            raise RuntimeError("insufficient funds")
        deducted = session.post(
            f"{market.url}/escrow/{escrow_id}/deduct", data=body, timeout=10,
            headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
        )
        if deducted.status_code != 200:
            raise RuntimeError(f"deduct refused: {deducted.status_code}")
        return fn(text)

    return paid, counter, session.close


def _gated(market: Market, escrow_id: str, settlement: str, fn: Callable[[str], str]):
    """The same function behind EscrowGate with the given settlement; requests counted."""
    from gate import EscrowGate, PerCall

    gate = EscrowGate(market.url, market.seller.api_key, seller_id=market.seller.agent_id, settlement=settlement)
    counter = RequestCounter().attach(gate._client._session)  # the gate's one pooled requests.Session
    paid = gate.paid(PerCall(PRICE), reason="bench call")(fn)

    def call(text: str) -> str:
        return paid(text, escrow_id=escrow_id)

    return call, counter, gate.close


def _measure_mode(market: Market, mode: str, escrow_id: str, fn: Callable[[str], str], calls: int,
                  budget_s: float) -> dict:
    if mode == "bare":
        call, counter, close = fn, None, (lambda: None)
    elif mode == "seed":
        call, counter, close = _seed_pattern(market, escrow_id, fn)
    else:
        call, counter, close = _gated(market, escrow_id, mode, fn)
    try:
        for _ in range(WARMUP_CALLS):
            call("warm up")
        if counter:
            counter.reset()
        samples = _timed(lambda: call("I love this!"), calls, time.monotonic() + budget_s)
    finally:
        close()  # the gate's close() captures what the measured calls still owe: counted too
    requests_made = counter.reset() if counter else 0
    return {"samples": samples, "requests": requests_made}


def _rows(latency: int, fn_label: str, measured: dict[str, dict]) -> list[dict]:
    bare = measured["bare"]["samples"]
    bare_p50, bare_p99 = percentile(bare, 50), percentile(bare, 99)
    seed = measured.get("seed")
    seed_added_p50 = percentile(seed["samples"], 50) - bare_p50 if seed else None
    rows = []
    for mode, result in measured.items():
        samples = result["samples"]
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        added_p50 = p50 - bare_p50
        rows.append({
            "benchmark": "gate overhead",
            "latency_ms": latency,
            "function": fn_label,
            "mode": mode,
            "calls": len(samples),
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": max(samples) * 1e3,
            "added_p50_ms": added_p50 * 1e3,
            "added_p99_ms": (p99 - bare_p99) * 1e3,
            "slow_calls": sum(1 for s in samples if (s - bare_p50) * 1e3 > SLOW_MS),
            "added_p50_vs_seed": (added_p50 / seed_added_p50) if seed_added_p50 and seed_added_p50 > 0 else None,
            "escrow_requests_per_call": measured[mode]["requests"] / len(samples) if mode != "bare" else 0.0,
        })
    return rows


def run(short: bool = False, *, calls: int | None = None) -> list[dict]:
    """One row per (latency, function, mode): p50/p99 latency, added over bare, escrow requests per paid call."""
    calls = calls or (60 if short else 200)
    budget_s = 60.0 if short else 120.0  # per mode and latency; a slow service shortens the sample, never hangs
    rows = []
    for latency in LATENCIES_MS:
        plan = [(mode, work, "trivial", LEASE_MIN_CALLS if mode == "lease" and calls < LEASE_MIN_CALLS else calls)
                for mode in MODES]
        plan += [(mode, paced_work, f"{PACED_WORK_MS} ms", calls) for mode in PACED_MODES]
        with escrow_service(latency, escrows=len(plan), amount_micro=ESCROW_MICRO) as market:
            measured: dict[str, dict[str, dict]] = {}
            for index, (mode, fn, label, count) in enumerate(plan):
                measured.setdefault(label, {})[mode] = _measure_mode(
                    market, mode, market.escrow_ids[index], fn, count, budget_s)
        for label, by_mode in measured.items():
            rows.extend(_rows(latency, label, by_mode))
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'escrow':>6}  {'function':<8} {'mode':<9} {'calls':>5}  {'p50 ms':>8}  {'p99 ms':>8}  "
            f"{'added p50':>9}  {'added p99':>9}  {'slow>1ms':>8}  {'added p50/seed':>14}  {'escrow req/call':>15}")
    lines = [head]
    for row in rows:
        bare = row["mode"] == "bare"
        ratio = "-" if bare or row["added_p50_vs_seed"] is None else f"{row['added_p50_vs_seed']:.4f}x"
        added50 = "-" if bare else f"{row['added_p50_ms']:.3f}"
        added99 = "-" if bare else f"{row['added_p99_ms']:.3f}"
        slow = "-" if bare else str(row["slow_calls"])
        requests_per_call = "-" if bare else f"{row['escrow_requests_per_call']:.3f}"
        lines.append(
            f"{row['latency_ms']:>4}ms  {row['function']:<8} {row['mode']:<9} {row['calls']:>5}  {row['p50_ms']:>8.3f}  "
            f"{row['p99_ms']:>8.3f}  {added50:>9}  {added99:>9}  {slow:>8}  {ratio:>14}  {requests_per_call:>15}"
        )
    return "\n".join(lines)


TITLE = "Gate overhead per paid call (sequential, one thread; added = mode - bare function)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="60 calls per mode instead of 200")
    parser.add_argument("--calls", type=int, default=None, help="measured calls per mode and latency")
    args = parser.parse_args(argv)
    print(banner(TITLE), flush=True)
    print(format_table(run(args.short, calls=args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
