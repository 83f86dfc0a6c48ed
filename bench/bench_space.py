"""The Space end to end: requests/s through gradio_client, gated vs ungated, batching on vs off.

A model of roberta-base shape (hidden 768, 12 layers, 12 heads, intermediate 3072, 514
positions; random weights, built offline with the tests' tiny BPE tokenizer, so its forward
pass costs what the real one costs for the same number of tokens) is served by a Gradio Blocks
app in a subprocess on loopback, with four endpoints built like app.py's /classify:

- /ungated_direct   model.predict(text)              (batching off, no gate)
- /ungated_batched  DynamicBatcher.submit(text)      (batching on, no gate)
- /gated_direct     the same behind EscrowGate       (receipt=True, like app.py)
- /gated_batched    the same behind EscrowGate
- /ungated_echo, /gated_echo   no model at all (concurrency 1 and 8): what serving alone costs

Per row it also reports the CPU time per request of the server process and of the client
threads (this process), from /proc and time.process_time(), to show where the 2 cores go.

The gate's settlement is `lease` unless `--settlement per_call`; the escrow is the sandbox
(`python -m escrow serve`, 0 ms added latency) in another subprocess; each client thread pays
from its own escrow. C client threads (one gradio_client.Client each, closed loop: the next
call as soon as the last one answered) call one endpoint for a fixed time; requests/s is the
calls answered divided by the time they took. The clients run in this process, so on a small
machine they take CPU from the server: that is part of what is measured.

`python -m bench.bench_space [--short]` prints the table; `run(short)` returns its rows.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built here; nothing is downloaded
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bench._common import REPO, banner, escrow_service, load_average, percentile, stop_process  # noqa: E402

CONCURRENCY = (1, 8, 16, 32)
ECHO_CONCURRENCY = (1, 8)  # the same endpoints without the model: what serving alone costs
PRICE = Decimal("0.001")
ESCROW_MICRO = 10**10  # 10,000 USDC per client: never the limit here
SERVER_START_TIMEOUT_S = 240.0
CALL_TIMEOUT_S = 120.0
MAX_BATCH, MAX_WAIT_MS = 16, 5  # app.py's DynamicBatcher settings
# Tweet-sized texts (varied lengths, so batches are padded as in real traffic).
TEXTS = [
    "I love this, it is wonderful.",
    "The service was slow and the food was cold, never going back there again.",
    "Not sure how I feel about the new update yet.",
    "Best purchase I have made all year, the battery lasts for days and the screen is gorgeous!",
    "Worst customer support ever.",
    "The train arrives at nine in the morning and leaves again at ten.",
    "Absolutely brilliant performance by the whole team tonight, what a game!",
    "I'm disappointed, the package arrived broken and nobody answers the phone.",
]
ROBERTA_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "max_position_embeddings": 514}


# ---------------------------------------------------------------- the model


def build_roberta_base_shape(folder: Path) -> Path:
    """The tests' offline tokenizer + a random RobertaForSequenceClassification of roberta-base shape."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from tests.support.tiny_model import build_tiny_model

    _quiet_transformers()
    build_tiny_model(folder)  # tokenizer files + a tiny checkpoint, replaced below
    tiny = RobertaConfig.from_pretrained(folder)
    config = RobertaConfig(
        vocab_size=tiny.vocab_size, type_vocab_size=1, pad_token_id=tiny.pad_token_id,
        bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id, num_labels=3,
        id2label=tiny.id2label, label2id=tiny.label2id, **ROBERTA_BASE,
    )
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the server (subprocess)


def _serve(args: argparse.Namespace) -> int:
    """Child process: load the model, build the app, print its URL, serve until stdin closes."""
    import gradio as gr

    from gate import EscrowGate, PerCall
    from models import DynamicBatcher, load_model

    _quiet_transformers()
    model = load_model(args.model_dir, device="cpu")
    alone = {size: _model_alone(model, size, args.model_seconds) for size in (1, MAX_BATCH)}
    stats = {"batches": 0, "items": 0}
    stats_lock = threading.Lock()

    def predict_batch(texts):
        with stats_lock:
            stats["batches"] += 1
            stats["items"] += len(texts)
        return model.predict_batch(texts)

    batcher = DynamicBatcher(predict_batch, max_batch_size=MAX_BATCH, max_wait_ms=MAX_WAIT_MS)
    gate = EscrowGate(args.escrow_url, args.seller_key, seller_id=args.seller_id, settlement=args.settlement)

    def direct(text: str) -> dict:
        return predict_batch([text])[0].as_dict()

    def batched(text: str) -> dict:
        return batcher.submit(text).as_dict()

    def paid(fn):
        return gate.paid(PerCall(PRICE), reason="sentiment classification", receipt=True,
                         receipt_extra={"model": model.name})(fn)

    def echo(text: str) -> dict:
        return {"label": "neutral", "score": 0.0, "text_length": len(text)}

    def read_stats() -> dict:
        with stats_lock:
            return dict(stats)

    with gr.Blocks() as demo:
        text = gr.Textbox()
        escrow_box = gr.Textbox()
        result, receipt, info = gr.JSON(), gr.JSON(), gr.JSON()
        for name, fn in (("direct", direct), ("batched", batched), ("echo", echo)):
            gr.Button().click(fn, [text], [result], api_name=f"ungated_{name}", concurrency_limit=32)
            gr.Button().click(paid(fn), [text, escrow_box], [result, receipt], api_name=f"gated_{name}",
                              concurrency_limit=32)
        gr.Button().click(read_stats, [], [info], api_name="stats")
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=args.port, quiet=True)
    tokens = [len(model._tokenizer(t)["input_ids"]) for t in TEXTS]
    print(f"READY http://127.0.0.1:{args.port}/ tokens={sum(tokens) / len(tokens):.1f} "
          f"alone1={alone[1]:.3f} alone{MAX_BATCH}={alone[MAX_BATCH]:.3f}", flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us
    demo.close()
    gate.close()
    batcher.close()
    return 0


def _quiet_transformers() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _model_alone(model, size: int, seconds: float) -> float:
    """Texts/s of model.predict_batch on batches of `size` (no server, no batcher), for `seconds`.

    Every size goes through TEXTS in the same order, so both see the same mix of lengths.
    """
    model.predict_batch(TEXTS[:size])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_batch([TEXTS[(done + i) % len(TEXTS)] for i in range(size)])
        done += size
    return done / (time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model_dir: Path, market, settlement: str, model_seconds: float) -> tuple[subprocess.Popen, str, dict]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_space", "--serve", "--port", str(port), "--model-dir", str(model_dir),
         "--escrow-url", market.url, "--seller-key", market.seller.api_key, "--seller-id", market.seller.agent_id,
         "--settlement", settlement, "--model-seconds", str(model_seconds)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith("READY "):
                found.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(SERVER_START_TIMEOUT_S)
    if not found:
        process.kill()
        raise RuntimeError(f"the benchmark Space did not start (exit code {process.poll()})")
    _, url, *facts = found[0].split()
    return process, url, {key: float(value) for key, value in (fact.split("=") for fact in facts)}


def _stop_server(process: subprocess.Popen) -> None:
    stop_process(process, process.stdin.close)  # its stdin closing is the server's signal to stop


# ---------------------------------------------------------------- the clients


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cell(clients: list, escrow_ids: list[str], endpoint: str, concurrency: int, seconds: float,
          server_pid: int) -> dict:
    """`concurrency` closed-loop client threads on `endpoint` for `seconds`: requests/s and latency."""
    gated = endpoint.startswith("/gated")
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    stop_at: list[float] = []
    start_at: list[float] = []

    cpu_at: list[float] = []

    def go() -> None:  # run once, when every thread has warmed up, before any is released
        cpu_at.extend((_cpu_seconds(server_pid), time.process_time()))
        start_at.append(time.perf_counter())
        stop_at.append(time.monotonic() + seconds)

    barrier = threading.Barrier(concurrency + 1, action=go, timeout=CALL_TIMEOUT_S)

    def call(index: int, text: str) -> None:
        args = (text, escrow_ids[index]) if gated else (text,)
        clients[index].predict(*args, api_name=endpoint)

    def worker(index: int) -> None:
        try:
            call(index, TEXTS[index % len(TEXTS)])  # warm-up: the lease, the connection
        except Exception as exc:  # noqa: BLE001 - reported in the row
            errors.append(f"{type(exc).__name__}: {exc}")
        barrier.wait()
        n = index
        while time.monotonic() < stop_at[0]:
            started = time.perf_counter()
            try:
                call(index, TEXTS[n % len(TEXTS)])
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies[index].append(time.perf_counter() - started)
            n += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join(seconds + CALL_TIMEOUT_S)
    elapsed = time.perf_counter() - start_at[0]
    server_cpu, client_cpu = _cpu_seconds(server_pid) - cpu_at[0], time.process_time() - cpu_at[1]
    done = [s for per_thread in latencies for s in per_thread]
    return {
        "server_cpu_ms_per_req": server_cpu / len(done) * 1e3 if done else float("nan"),
        "client_cpu_ms_per_req": client_cpu / len(done) * 1e3 if done else float("nan"),
        "requests": len(done),
        "req_per_s": len(done) / elapsed,
        "p50_ms": percentile(done, 50) * 1e3 if done else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def run(short: bool = False, *, settlement: str = "lease", seconds: float | None = None) -> list[dict]:
    """One row per (concurrency, batching): requests/s ungated and gated, and the ratios."""
    from gradio_client import Client

    seconds = seconds or (4.0 if short else 15.0)
    rows = []
    largest = max(CONCURRENCY)
    with tempfile.TemporaryDirectory(prefix="bench-space-") as tmp, \
            escrow_service(0, escrows=largest, amount_micro=ESCROW_MICRO) as market:
        model_dir = build_roberta_base_shape(Path(tmp) / "roberta-base-shape")
        process, url, facts = _start_server(model_dir, market, settlement, 3.0 if short else 8.0)
        tokens = facts["tokens"]
        try:
            clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(largest)]
            try:
                for concurrency in CONCURRENCY:
                    measured = {}
                    kinds = ("direct", "batched") + (("echo",) if concurrency in ECHO_CONCURRENCY else ())
                    for kind in kinds:
                        before = clients[0].predict(api_name="/stats")
                        for gating in ("ungated", "gated"):
                            measured[(kind, gating)] = _cell(clients, market.escrow_ids, f"/{gating}_{kind}",
                                                             concurrency, seconds, process.pid)
                        after = clients[0].predict(api_name="/stats")
                        batches = after["batches"] - before["batches"]
                        measured[(kind, "mean_batch")] = (after["items"] - before["items"]) / batches if batches else None
                    for kind in kinds:
                        rows.append(_row(measured, kind, concurrency, settlement, facts))
            finally:
                for client in clients:
                    client.close()
        finally:
            _stop_server(process)
    return rows


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _row(measured: dict, kind: str, concurrency: int, settlement: str, facts: dict) -> dict:
    ungated, gated = measured[(kind, "ungated")], measured[(kind, "gated")]
    off_u, off_g = measured[("direct", "ungated")], measured[("direct", "gated")]
    batched = kind == "batched"
    return {
        "benchmark": "space",
        "settlement": settlement,
        "concurrency": concurrency,
        "endpoint": {"direct": "model, batching off", "batched": "model, batching on", "echo": "no model (echo)"}[kind],
        "mean_batch": measured[(kind, "mean_batch")],
        "tokens_per_text": facts["tokens"],
        "model_alone_texts_per_s_batch1": facts["alone1"],
        f"model_alone_texts_per_s_batch{MAX_BATCH}": facts[f"alone{MAX_BATCH}"],
        "ungated_req_per_s": ungated["req_per_s"],
        "gated_req_per_s": gated["req_per_s"],
        "ungated_p50_ms": ungated["p50_ms"],
        "gated_p50_ms": gated["p50_ms"],
        "gated_over_ungated": _ratio(gated["req_per_s"], ungated["req_per_s"]),
        "ungated_on_over_off": _ratio(ungated["req_per_s"], off_u["req_per_s"]) if batched else None,
        "gated_on_over_off": _ratio(gated["req_per_s"], off_g["req_per_s"]) if batched else None,
        "server_cpu_ms_per_req": (ungated["server_cpu_ms_per_req"], gated["server_cpu_ms_per_req"]),
        "client_cpu_ms_per_req": (ungated["client_cpu_ms_per_req"], gated["client_cpu_ms_per_req"]),
        "requests": ungated["requests"] + gated["requests"],
        "errors": ungated["errors"] + gated["errors"],
        "first_error": ungated["first_error"] or gated["first_error"],
    }


def format_table(rows: list[dict]) -> str:
    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    head = (f"{'conc':>4}  {'endpoint':<20} {'batch':>5}  {'ungated req/s':>13}  {'gated req/s':>11}  "
            f"{'gated/ungated':>13}  {'p50 ms u/g':>13}  {'on/off ungated':>14}  {'on/off gated':>12}  "
            f"{'server CPU ms/req u/g':>21}  {'client CPU ms/req u/g':>21}  {'errors':>6}")
    lines = [head]
    for row in rows:
        batch = "-" if row["mean_batch"] is None else f"{row['mean_batch']:.1f}"
        p50 = f"{row['ungated_p50_ms']:.0f}/{row['gated_p50_ms']:.0f}"
        server = "{:.0f}/{:.0f}".format(*row["server_cpu_ms_per_req"])
        client = "{:.0f}/{:.0f}".format(*row["client_cpu_ms_per_req"])
        lines.append(
            f"{row['concurrency']:>4}  {row['endpoint']:<20} {batch:>5}  {row['ungated_req_per_s']:>13.1f}  "
            f"{row['gated_req_per_s']:>11.1f}  {x(row['gated_over_ungated']):>13}  {p50:>13}  "
            f"{x(row['ungated_on_over_off']):>14}  {x(row['gated_on_over_off']):>12}  {server:>21}  {client:>21}  "
            f"{row['errors']:>6}"
        )
    errors = [row["first_error"] for row in rows if row["first_error"]]
    if errors:
        lines.append(f"first error: {errors[0]}")
    return "\n".join(lines)


TITLE = "Space end to end via gradio_client: requests/s, gated vs ungated, batching on vs off"


def details(settlement: str, rows: list[dict]) -> str:
    if not rows:
        return "no rows"
    row = rows[0]
    alone1, alone_n = row["model_alone_texts_per_s_batch1"], row[f"model_alone_texts_per_s_batch{MAX_BATCH}"]
    return (f"roberta-base shape, random weights, {row['tokens_per_text']:.1f} tokens/text on average; "
            f"gate settlement={settlement}; DynamicBatcher max {MAX_BATCH} texts, {MAX_WAIT_MS} ms wait\n"
            f"model alone (predict_batch in the server process, no HTTP): {alone1:.1f} texts/s one by one, "
            f"{alone_n:.1f} texts/s in batches of {MAX_BATCH} = {alone_n / alone1:.2f}x; "
            f"load average at end: {load_average()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="4 s per measurement instead of 15 s")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--settlement", choices=("lease", "per_call"), default="lease")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--escrow-url", help=argparse.SUPPRESS)
    parser.add_argument("--seller-key", help=argparse.SUPPRESS)
    parser.add_argument("--seller-id", help=argparse.SUPPRESS)
    parser.add_argument("--model-seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args)
    print(banner(TITLE), flush=True)
    rows = run(args.short, settlement=args.settlement, seconds=args.seconds)
    print(details(args.settlement, rows))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
