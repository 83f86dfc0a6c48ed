"""The agent paths side by side (issue 13): what each way of calling a paid Space costs, against the function alone.

For each workload a Space runs in a subprocess on loopback, in sandbox mode (the escrow is the
sandbox inside the Space, no PF_API_KEY), with settlement `lease` (the default):

- echo:  a Space built with the kit the way app.py is (`space.Space`, `kit.paid`, `kit.blocks`,
         `kit.serve`) whose paid function `classify` returns its input
         (`python -m bench.bench_agents --serve echo`);
- model: the real `python app.py` (offline, its default model falls back to VADER; `--model-id`
         sets MODEL_ID, `--model-id tiny` builds the tests' tiny RoBERTa first). The model that
         answered is printed (the Space's /v1/pricing names it).

The same text is sent along each path, one thread per client (each its own client or session),
N calls split over the threads, closed loop; the paths:

- function:        the bare function in this process, no HTTP, no gate (echo: `text`; model:
                   `model.predict(text)`) -- the baseline of every ratio and difference;
- +batcher:        (model only) the same through app.py's DynamicBatcher(16 texts, 5 ms) in this
                   process: app.py's `classify` runs that, and with one caller the batcher waits
                   its 5 ms for company before it answers;
- ungated route:   a plain FastAPI `POST /v1/classify` doing what the Space's function does, with no
                   gate, served by uvicorn in another subprocess with the kit's RequestLimits
                   (`--serve ungated`): the HTTP stack's share;
- route /v1:       the Space's `POST /v1/classify` `{"text": …}` with `X-Escrow-Id` (requests.Session,
                   keep-alive);
- buyer:           `Wallet.sandbox(url)`, `wallet.space(url, budget_usdc=…)`, `space.call("classify",
                   text)` (it picks the plain route);
- gradio HTTP API: `POST /gradio_api/call/classify` `{"data": [text, escrow_id]}`, then
                   `GET …/<event_id>`, its event stream read to the `complete` event (requests.Session);
- gradio_client:   `Client(url).predict(text, escrow_id, api_name="/classify")`.

Every paid call is paid from a funded sandbox escrow: one per client thread and path, opened before
the measurement with room for 1,000 calls (the buyer path's session opens its own during the
warm-up calls); a call that raises, answers an error or comes back without a receipt counts as
refused. Per path: p50/p90 latency, calls/s (calls / wall time from the release of the threads to
the last answer), client CPU per call (time.process_time() of this process over the measured calls:
the clients only, the servers are other processes), the server's CPU per call (/proc), and the p50
against the bare function's. Nothing is asserted: the issue's target (the buyer client adds at most
2 ms p50 over the bare function at concurrency 1) is printed as measured.

`python -m bench.bench_agents [--short] [--calls N] [--model-id ID|tiny] [--workloads echo,model]`
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: app.py's default model falls back to VADER

from bench._common import banner, load_average, percentile, tempdir  # noqa: E402
from bench.bench_space import TEXTS, _cpu_seconds  # noqa: E402

TITLE = "Agent paths side by side (issue 13): the same Space, each way of calling it, against the function alone"
WORKLOADS = ("echo", "model")
CONCURRENCY = (1, 8)
PRICE = Decimal("0.001")
ESCROW_USDC = "1"  # per client thread and path: 1,000 calls at 0.001, never the limit here
FUNDING_USDC = "60"  # the funding buyer's faucet claim (the sandbox gives at most 100 USDC a day per agent)
BUDGET_USDC = "1"  # each buyer session's budget (one escrow of 1 USDC, opened at its first call)
TARGET_MS = 2.0  # issue 13: the buyer client adds at most 2 ms p50 over the bare function at concurrency 1
TIMEOUT_S = 60.0
BARE, BATCHER, UNGATED, ROUTE, BUYER, GRADIO_API, GRADIO_CLIENT = (
    "function", "+batcher", "ungated route", "route /v1", "buyer", "gradio HTTP API", "gradio_client")
MAX_BATCH, MAX_WAIT_MS = 16, 5  # app.py's DynamicBatcher


# ---------------------------------------------------------------- the servers (subprocesses)


def _serve_echo() -> int:
    """Child: a Space built like app.py whose paid `classify` returns its text; serves until SIGTERM."""
    import gradio as gr

    from gate import PerCall
    from models import MAX_TEXT_CHARS
    from space import Limits, Space

    with Space.from_env() as kit:

        @kit.paid(PerCall(PRICE), reason="echo", receipt_extra={"model": "echo"})
        def classify(text: str) -> str:
            """Return the text (what serving and the gate cost, without a model)."""
            return text

        with kit.blocks(title="Echo", intro="Echo, for a fee.", pricing={"price_per_call_usdc": PRICE, "model": "echo"},
                        api_name="classify", example_input='"hello"') as demo:
            with gr.Tab("Echo", id="echo"):
                text, escrow_box = gr.Textbox(), kit.escrow_id_box()
                out, receipt = gr.Textbox(), gr.JSON()
                gr.Button("Echo").click(classify, [text, escrow_box], [out, receipt], api_name="classify",
                                        concurrency_limit=32)
        kit.serve(demo, limits=Limits.for_text(MAX_TEXT_CHARS))
    return 0


def _serve_ungated(workload: str, model_id: str | None, port: int) -> int:
    """Child: a plain FastAPI POST /v1/classify {"text"} doing the Space's work, no gate; serves until SIGTERM."""
    import uvicorn
    from fastapi import Body, FastAPI

    from models import MAX_TEXT_CHARS
    from space import Limits, RequestLimits

    work = _work(workload, model_id, batched=True)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/classify")
    def classify(text: str = Body(..., embed=True)):
        return {"result": work(text)}

    app.add_middleware(RequestLimits, limits=Limits.for_text(MAX_TEXT_CHARS))
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run()
    return 0


def _work(workload: str, model_id: str | None, *, batched: bool) -> Callable[[str], object]:
    """The paid function's work: echo, or the model (through app.py's batcher when `batched`, as app.py does)."""
    if workload == "echo":
        return lambda text: text
    from models import DynamicBatcher, load_model

    model = load_model(model_id, allow_fallback=True)
    if not batched:
        return lambda text: model.predict(text).as_dict()
    batcher = DynamicBatcher(model.predict_batch, max_batch_size=MAX_BATCH, max_wait_ms=MAX_WAIT_MS)
    return lambda text: batcher.submit(text).as_dict()


def _start_servers(workload: str, model_id: str | None, tmp: Path):
    """The Space and the ungated server for `workload`, started side by side; (space, ungated) ServerProcesses."""
    from tests.support.processes import ServerProcess, child_env, free_port, space_process

    me = [sys.executable, "-m", "bench.bench_agents"]
    model_env = {"MODEL_ID": model_id} if model_id else {}
    if workload == "echo":
        port = free_port()
        env = child_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), DATA_DIR=str(tmp / "echo-data"))
        space = ServerProcess(me + ["--serve", "echo"], env, port, tmp / "echo-space.log")
    else:
        space = space_process(tmp, **model_env)
    port = free_port()
    ungated = ServerProcess(me + ["--serve", "ungated", "--workload", workload, "--port", str(port)]
                            + (["--model-id", model_id] if model_id else []),
                            child_env(**model_env), port, tmp / f"ungated-{workload}.log")
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(server.start, 240.0) for server in (space, ungated)]
        for future in started:
            future.result()
    return space, ungated


# ---------------------------------------------------------------- the clients (this process)


class Refused(Exception):
    """A paid call that was not served and paid (an error answer, or no receipt)."""


@dataclass
class Caller:
    """One client thread's way of making one call, and what closes it afterwards."""

    call: Callable[[str], object]
    close: Callable[[], object] = lambda: None
    extra: dict = field(default_factory=dict)


def _session():
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def _route_caller(url: str, escrow_id: str | None) -> Caller:
    """POST <url>/v1/classify {"text"} on a keep-alive session; the Space's route (X-Escrow-Id) or the ungated one."""
    session = _session()
    headers = {"X-Escrow-Id": escrow_id} if escrow_id else {}

    def call(text: str) -> object:
        answer = session.post(url + "/v1/classify", json={"text": text}, headers=headers, timeout=TIMEOUT_S)
        body = answer.json()
        if answer.status_code != 200 or (escrow_id and not body.get("receipt")):
            raise Refused(f"HTTP {answer.status_code}: {str(body)[:200]}")
        return body["result"]

    return Caller(call, session.close)


def _gradio_api_caller(url: str, escrow_id: str) -> Caller:
    """Gradio's own HTTP API: POST /gradio_api/call/classify, then the event stream to its `complete` event."""
    import json

    session = _session()
    endpoint = url + "/gradio_api/call/classify"

    def call(text: str) -> object:
        posted = session.post(endpoint, json={"data": [text, escrow_id]}, timeout=TIMEOUT_S)
        if posted.status_code != 200:
            raise Refused(f"HTTP {posted.status_code}: {posted.text[:200]}")
        event, outcome = None, None
        with session.get(f"{endpoint}/{posted.json()['event_id']}", stream=True, timeout=TIMEOUT_S) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    outcome = (event, json.loads(line[len("data: "):]))
                    break
        if outcome is None or outcome[0] != "complete" or not outcome[1] or len(outcome[1]) < 2 or not outcome[1][1]:
            raise Refused(f"event stream ended with {outcome!r}"[:300])
        return outcome[1][0]

    return Caller(call, session.close)


def _gradio_client_caller(url: str, escrow_id: str) -> Caller:
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)

    def call(text: str) -> object:
        result, receipt = client.predict(text, escrow_id, api_name="/classify")
        if not receipt or not receipt.get("charge_id"):
            raise Refused(f"no receipt: {receipt!r}"[:300])
        return result

    return Caller(call, client.close)


def _buyer_caller(url: str) -> Caller:
    """`Wallet.sandbox(url)` then `wallet.space(url, budget_usdc=…)`: space.call("classify", text)."""
    from buyer import Wallet

    wallet = Wallet.sandbox(url, faucet_usdc="2")
    space = wallet.space(url, budget_usdc=BUDGET_USDC)
    caller = Caller(lambda text: None)

    def call(text: str) -> object:
        result, receipt = space.call("classify", text)
        if receipt is None:
            raise Refused("no receipt")
        return result

    def close() -> None:
        caller.extra["statement"] = space.close()
        wallet.close()

    caller.call, caller.close = call, close
    return caller


# ---------------------------------------------------------------- one cell: a path at a concurrency


def _cell(callers: list[Caller], calls: int, warmup: int, server_pid: int | None) -> dict:
    """`calls` calls split over one thread per caller, after `warmup` calls each; latency, rate, CPU, refusals."""
    threads = len(callers)
    per_thread = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    for index, caller in enumerate(callers):  # the first calls open leases, connections, the buyer's escrow
        for k in range(warmup):
            caller.call(TEXTS[(index + k) % len(TEXTS)])
    samples: list[list[float]] = [[] for _ in range(threads)]
    refused = [0] * threads
    marks: dict[str, float] = {}

    def release() -> None:  # run by one thread, when all are ready, before any is released
        marks.update(wall=time.perf_counter(), cpu=time.process_time(),
                     server=_cpu_seconds(server_pid) if server_pid else 0.0)

    barrier = threading.Barrier(threads, action=release)

    def worker(index: int) -> None:
        call, own = callers[index].call, samples[index]
        barrier.wait()
        for k in range(per_thread[index]):
            text = TEXTS[(index + k) % len(TEXTS)]
            started = time.perf_counter()
            try:
                call(text)
            except Exception:  # noqa: BLE001 - a refusal or failure is counted, never fatal
                refused[index] += 1
            own.append(time.perf_counter() - started)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall, cpu = time.perf_counter() - marks["wall"], time.process_time() - marks["cpu"]
    server = (_cpu_seconds(server_pid) - marks["server"]) if server_pid else None
    done = [s for own in samples for s in own]
    return {
        "calls": len(done),
        "refused": sum(refused),
        "p50_ms": percentile(done, 50) * 1e3,
        "p90_ms": percentile(done, 90) * 1e3,
        "calls_per_s": len(done) / wall,
        "client_cpu_ms": cpu / len(done) * 1e3,
        "server_cpu_ms": None if server is None else server / len(done) * 1e3,
    }


def _open_escrows(url: str, count: int) -> list[str]:
    """`count` funded sandbox escrows for the Space at `url`, from one funding buyer."""
    import requests

    from buyer import Wallet

    seller_id = requests.get(url + "/v1/pricing", timeout=TIMEOUT_S).json()["seller_id"]
    with Wallet.sandbox(url, faucet_usdc=FUNDING_USDC, name="bench-funding") as wallet:
        return [wallet.open_escrow(seller_id, ESCROW_USDC, ttl_seconds=7200)["id"] for _ in range(count)]


def _workload(workload: str, model_id: str | None, calls: dict[int, int], warmup: int, tmp: Path) -> tuple[list, dict]:
    """Every path at every concurrency against one running Space (and the ungated server); rows and facts."""
    import requests

    space, ungated = _start_servers(workload, model_id, tmp)
    facts: dict = {"load_start": load_average()}
    try:
        url = space.base_url
        pricing = requests.get(url + "/v1/pricing", timeout=TIMEOUT_S).json()
        facts["model"] = pricing.get("model", "?")
        bare = _work(workload, model_id, batched=False)
        facts["bare_model"] = "echo (returns the text)"
        if workload == "model":
            from models import load_model

            facts["bare_model"] = load_model(model_id, allow_fallback=True).name
        with_batcher = _work(workload, model_id, batched=True) if workload == "model" else None
        escrows = iter(_open_escrows(url, 3 * sum(CONCURRENCY)))
        statements = []
        rows = []
        space_pid, ungated_pid = space.process.pid, ungated.process.pid
        for concurrency in CONCURRENCY:
            plan: list[tuple[str, Callable[[], Caller], int | None]] = [(BARE, lambda: Caller(bare), None)]
            if with_batcher:
                plan.append((BATCHER, lambda: Caller(with_batcher), None))
            plan += [
                (UNGATED, lambda: _route_caller(ungated.base_url, None), ungated_pid),
                (ROUTE, lambda: _route_caller(url, next(escrows)), space_pid),
                (BUYER, lambda: _buyer_caller(url), space_pid),
                (GRADIO_API, lambda: _gradio_api_caller(url, next(escrows)), space_pid),
                (GRADIO_CLIENT, lambda: _gradio_client_caller(url, next(escrows)), space_pid),
            ]
            for path, make, pid in plan:
                callers = [make() for _ in range(concurrency)]
                try:
                    measured = _cell(callers, calls[concurrency], warmup, pid)
                finally:
                    for caller in callers:
                        caller.close()
                statements += [c.extra["statement"] for c in callers if "statement" in c.extra]
                rows.append({"workload": workload, "concurrency": concurrency, "path": path, **measured})
                print(f"  {workload} c={concurrency} {path}: p50 {measured['p50_ms']:.3f} ms, "
                      f"{measured['calls_per_s']:.0f} calls/s, refused {measured['refused']} "
                      f"(load {load_average()})", flush=True)
        facts["buyer_statements"] = statements
    finally:
        for server in (space, ungated):
            server.stop()
    facts["load_end"] = load_average()
    _relate(rows)
    return rows, facts


def _relate(rows: list[dict]) -> None:
    """Each row's p50 against its workload's bare function at the same concurrency."""
    bare = {(r["workload"], r["concurrency"]): r["p50_ms"] for r in rows if r["path"] == BARE}
    for row in rows:
        base = bare[(row["workload"], row["concurrency"])]
        row["added_p50_ms"] = row["p50_ms"] - base
        row["p50_ratio"] = row["p50_ms"] / base if base > 0 else None


def run(short: bool = False, *, calls: int | None = None, model_id: str | None = None,
        workloads: tuple[str, ...] = WORKLOADS) -> tuple[list[dict], dict]:
    """All rows, and per workload its facts (model, load averages, buyer statements)."""
    one = calls or (40 if short else 150)
    plan = {1: one, 8: 2 * one + (0 if short else 20)}  # 80 short, 320 full: 40 per thread
    warmup = 3 if short else 5
    rows, facts = [], {}
    with tempdir("bench-agents-") as tmp:
        if model_id == "tiny":
            from tests.support.tiny_model import build_tiny_model

            model_id = str(build_tiny_model(Path(tmp) / "tiny-model"))
        for workload in workloads:
            print(f"-- {workload}: starting the Space and the ungated server (load {load_average()})", flush=True)
            workload_rows, facts[workload] = _workload(workload, model_id, plan, warmup, Path(tmp))
            rows += workload_rows
    return rows, facts


# ---------------------------------------------------------------- the report


def format_table(rows: list[dict]) -> str:
    head = (f"{'workload':<8} {'conc':>4}  {'path':<15} {'calls':>5} {'refused':>7}  {'p50 ms':>8} {'p90 ms':>8}  "
            f"{'calls/s':>8}  {'client CPU ms/call':>18} {'server CPU ms/call':>18}  "
            f"{'p50-bare ms':>11} {'p50/bare':>9}")
    lines = [head]
    for row in rows:
        bare = row["path"] == BARE
        server = "-" if row["server_cpu_ms"] is None else f"{row['server_cpu_ms']:.2f}"
        added = "-" if bare else f"{row['added_p50_ms']:+.3f}"
        ratio = "-" if bare or row["p50_ratio"] is None else (
            f"{row['p50_ratio']:.0f}x" if row["p50_ratio"] >= 100 else f"{row['p50_ratio']:.2f}x")
        lines.append(
            f"{row['workload']:<8} {row['concurrency']:>4}  {row['path']:<15} {row['calls']:>5} {row['refused']:>7}  "
            f"{row['p50_ms']:>8.3f} {row['p90_ms']:>8.3f}  {row['calls_per_s']:>8.0f}  {row['client_cpu_ms']:>18.3f} "
            f"{server:>18}  {added:>11} {ratio:>9}")
    return "\n".join(lines)


def summary(rows: list[dict], facts: dict) -> str:
    """Which model answered, the refusals, where the time goes at concurrency 1, and the issue's target."""
    lines = []
    by = {(r["workload"], r["concurrency"], r["path"]): r for r in rows}
    for workload, fact in facts.items():
        statements = fact["buyer_statements"]
        lines.append(
            f"{workload}: the Space answered with model {fact['model']!r}; the bare function in this process: "
            f"{fact['bare_model']!r}; load average {fact['load_start']} at start, {fact['load_end']} at end")
        refused = sum(r["refused"] for r in rows if r["workload"] == workload)
        lines.append(
            f"  refused calls: {refused} over all paths; buyer statements: {len(statements)} sessions, "
            f"{sum(s.calls for s in statements)} paid calls, {sum(s.refused for s in statements)} refused, "
            f"{sum(s.unknown for s in statements)} unknown, captured = receipts on every escrow: "
            f"{all(s.matches for s in statements)}")
        p50 = {path: r["p50_ms"] for (w, c, path), r in by.items() if w == workload and c == 1}
        if BARE in p50 and UNGATED in p50 and ROUTE in p50:
            work = p50.get(BATCHER, p50[BARE])
            shares = [f"HTTP stack (ungated route - {'function+batcher' if BATCHER in p50 else 'function'}) "
                      f"{p50[UNGATED] - work:+.3f} ms",
                      f"gate + kit (route - ungated) {p50[ROUTE] - p50[UNGATED]:+.3f} ms"]
            if BATCHER in p50:
                shares.insert(0, f"app.py's batcher (+batcher - function) {p50[BATCHER] - p50[BARE]:+.3f} ms")
            shares += [f"{path} over the route {p50[path] - p50[ROUTE]:+.3f} ms"
                       for path in (BUYER, GRADIO_API, GRADIO_CLIENT) if path in p50]
            lines.append("  p50 at concurrency 1, where it goes: " + "; ".join(shares))
        if BUYER in p50:
            added = p50[BUYER] - p50[BARE]
            met = "MET" if added <= TARGET_MS else "NOT MET"
            note = ""
            if BATCHER in p50:
                note = (f" (over the function through app.py's batcher, which the Space runs: "
                        f"{p50[BUYER] - p50[BATCHER]:+.3f} ms)")
            lines.append(f"  target (buyer adds <= {TARGET_MS:g} ms p50 over the bare function at concurrency 1): "
                         f"{met}: {added:+.3f} ms{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="40 calls at concurrency 1 and 80 at 8 (instead of 150/320)")
    parser.add_argument("--calls", type=int, default=None, help="calls at concurrency 1 (about twice at 8)")
    parser.add_argument("--model-id", default=None, help="MODEL_ID for app.py ('tiny': the tests' tiny model)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="echo,model (or one of them)")
    parser.add_argument("--serve", choices=("echo", "ungated"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "echo":
        return _serve_echo()
    if args.serve == "ungated":
        return _serve_ungated(args.workload, args.model_id, args.port)
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if not set(workloads) <= set(WORKLOADS):
        parser.error(f"--workloads: choose among {', '.join(WORKLOADS)}")
    started = time.monotonic()
    print(banner(TITLE), flush=True)
    rows, facts = run(args.short, calls=args.calls, model_id=args.model_id, workloads=workloads)
    print()
    print(format_table(rows))
    print(summary(rows, facts))
    print(f"({time.monotonic() - started:.0f} s; load average at end: {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
