"""The example Spaces' paid functions: tokens/s and vectors/s gated vs ungated, and the gate's share of a call.

In one process, as examples/chat/app.py and examples/embeddings/app.py wire them: the model, the price rule
(`PerToken` with the chat template's prompt count and the call's max_new_tokens; `PerItem` per 1,000
vectors), and an `EscrowGate` with the Space's default settlement (lease) against `python -m escrow serve`
on loopback. Ungated and gated calls alternate (A, B, A, B...) so that drift and heat hit both alike.

- ungated: the model alone (chat: the prompt's ids, then the stream read to its end); embeddings: the
  example's function without the gate (its texts through the `DynamicBatcher`);
- gated: the example's paid function called as an agent calls it (escrow ID given): the input check,
  the price (the chat template rendered again), reserve, the model, the charge, the receipt;
- gate share: the gated call's time outside the model (total less the time the paid function itself
  ran), divided by the gated call's time: median over the calls;
- single-figure rows (embeddings): a lone one-text call on the model alone (what the batcher costs it),
  and 8 threads of one-text paid calls, through the batcher (shared forward passes) vs each call
  running its own forward pass.

The models have the defaults' shapes with random weights, built offline (this machine cannot reach the
Hub): SmolLM2-135M-Instruct's 30 layers of 576 and 49,152-token vocabulary, all-MiniLM-L6-v2's 6 layers
of 384; a forward pass costs what the real model's costs. Their tokenizers are the tests' small ones
(padded to the real vocabulary for the chat model), so the inputs are sentences made of their words.
`--chat-model`/`--embedding-model` take a real model (a folder or a cached hub id) instead.

`python -m bench.bench_examples [--short]` prints the tables; `run(short)` returns their rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._common import banner, escrow_service

TITLE = "Example Spaces: tokens/s and vectors/s through the paid function, gated vs ungated (lease, escrow on loopback)"

#: SmolLM2-135M-Instruct's config.json: the layer sizes that set what a token costs.
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True)
SMOLLM2_VOCAB = 49152
#: all-MiniLM-L6-v2's config.json (a BERT).
MINILM_L6 = dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
                 max_position_embeddings=512)

PROMPT = "Tell me about the weather today and what to wear"

#: examples/embeddings/app.py's batcher (batches of up to 64 texts, a call's most): a lone call waits at most
#: 2 ms for company (5 ms cost a one-text call about a third of its speed here; 0 ms gave up a sixth of the
#: concurrent throughput).
WAIT_MS = 2


def chat_twin(folder: Path) -> Path:
    """SmolLM2-135M's shape, random weights, the tests' ChatML tokenizer padded to its vocabulary."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_model import build_tiny_chat_model

    build_tiny_chat_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"w{i}" for i in range(SMOLLM2_VOCAB - len(tokenizer))])
    tokenizer.save_pretrained(folder)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **SMOLLM2_135M, **ids))
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(folder)
    return folder


def encoder_twin(folder: Path) -> Path:
    """all-MiniLM-L6-v2's shape, random weights, the tests' WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.support.tiny_model import build_tiny_encoder

    build_tiny_encoder(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(**MINILM_L6)).save_pretrained(folder)
    return folder


class Timed:
    """A paid function's own running time (the model's), summed over its calls in this thread."""

    def __init__(self) -> None:
        self.local = threading.local()

    def take(self) -> float:
        spent, self.local.spent = getattr(self.local, "spent", 0.0), 0.0
        return spent

    def add(self, seconds: float) -> None:
        self.local.spent = getattr(self.local, "spent", 0.0) + seconds


def _alternate(ungated: Callable[[], int], gated: Callable[[], int], timed: Timed, calls: int) -> dict:
    """Alternate the two; per call: seconds and units (tokens or vectors); the gated calls' share outside fn."""
    plain, paid, shares = [], [], []
    for _ in range(calls):
        started = time.perf_counter()
        units = ungated()
        plain.append((time.perf_counter() - started, units))
        timed.take()
        started = time.perf_counter()
        units = gated()
        total = time.perf_counter() - started
        paid.append((total, units))
        shares.append((total - timed.take()) / total)
    return {"ungated": plain, "gated": paid, "share": shares}


def _rate(samples: list[tuple[float, int]]) -> float:
    return sum(units for _, units in samples) / sum(seconds for seconds, _ in samples)


def _gate(market):
    from gate import EscrowGate

    return EscrowGate(market.url, market.seller.api_key, seller_id=market.seller.agent_id, settlement="lease")


def chat_rows(market, escrow_id: str, model_id: str, short: bool) -> list[dict]:
    from gate import PerToken
    from models import load_chat_model

    model = load_chat_model(model_id)
    timed = Timed()
    price = PerToken("0.0005", "0.0015", max_tokens=512, count_tokens=model.count_tokens,
                     input_tokens=lambda message, history, max_new_tokens: len(model.prompt_ids(message, history)),
                     output_limit=lambda message, history, max_new_tokens: max_new_tokens)

    def reply(message: str, history: list, max_new_tokens: int):
        started = time.perf_counter()
        stream = model.stream(model.prompt_ids(message, history), max_new_tokens)
        timed.add(time.perf_counter() - started)
        while True:
            started = time.perf_counter()
            try:
                item = next(stream)
            except StopIteration:
                timed.add(time.perf_counter() - started)
                return
            timed.add(time.perf_counter() - started)
            yield item

    def check(message: str, history: list, max_new_tokens: int) -> None:
        model.prompt_ids(message, history)

    rows = []
    with _gate(market) as gate:
        paid = gate.paid(price, reason="chat reply", check=check, receipt=True)(reply)

        def ungated(tokens: int) -> int:
            *_, last = model.stream(model.prompt_ids(PROMPT, []), tokens)
            return model.count_tokens(last)

        def gated(tokens: int) -> int:
            *_, (last, receipt) = paid(PROMPT, [], tokens, escrow_id)
            assert receipt["usage"]["output_tokens"] == model.count_tokens(last)
            return model.count_tokens(last)

        ungated(8), gated(8)  # warm up: first passes, the escrow lookup, the lease
        for tokens in (32,) if short else (32, 128):
            measured = _alternate(lambda: ungated(tokens), lambda: gated(tokens), timed, 3 if short else 5)
            rows.append({"what": f"chat reply, {tokens} new tokens", "unit": "tokens/s", **measured})
    return rows


def embedding_rows(market, escrow_id: str, model_id: str, short: bool) -> list[dict]:
    from gate import PerItem
    from models import DynamicBatcher, load_embedding_model
    from tests.support.tiny_model import TRAINING_SENTENCES

    model = load_embedding_model(model_id)
    timed = Timed()
    batcher = DynamicBatcher(model.embed_batch, max_batch_size=64, max_wait_ms=WAIT_MS, validate=lambda text: text)
    price = PerItem("0.01", count=lambda texts: len(texts), unit="vectors")

    def embed(texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        try:
            futures = [batcher.submit_future(text) for text in texts]
            return [future.result() for future in futures]
        finally:
            timed.add(time.perf_counter() - started)

    def embed_alone(texts: list[str]) -> list[list[float]]:
        return model.embed_batch(texts)

    def texts_for(count: int) -> list[str]:
        return [TRAINING_SENTENCES[i % len(TRAINING_SENTENCES)] for i in range(count)]

    rows = []
    try:
        with _gate(market) as gate:
            paid = gate.paid(price, reason="text embeddings", receipt=True)(embed)
            paid_alone = gate.paid(price, reason="text embeddings")(embed_alone)
            paid(texts_for(2), escrow_id), model.embed_batch(texts_for(2))  # warm up
            for count in (1, 16) if short else (1, 16, 64):
                texts = texts_for(count)
                measured = _alternate(lambda: len(embed(texts)), lambda: len(paid(texts, escrow_id)[0]), timed,
                                      10 if short else 30)
                rows.append({"what": f"embeddings, {count} text{'s' if count > 1 else ''} per call",
                             "unit": "vectors/s", **measured})
            # What the batcher costs a lone call (its wait for company, two thread hops): the model called directly.
            calls = 30 if short else 100
            started = time.perf_counter()
            for i in range(calls):
                model.embed_batch([TRAINING_SENTENCES[i % 30]])
            rows.append({"what": "embeddings, 1 text per call, the model alone (no batcher, no gate)",
                         "unit": "vectors/s", "concurrent": calls / (time.perf_counter() - started)})
            # 8 agents at once, one text per call: the batcher shares forward passes across their calls.
            for label, fn in (("through the batcher", paid), ("each call its own pass", paid_alone)):
                calls = 80 if short else 240
                with ThreadPoolExecutor(8) as pool:
                    started = time.perf_counter()
                    list(pool.map(lambda i: fn([TRAINING_SENTENCES[i % 30]], escrow_id), range(calls)))
                    seconds = time.perf_counter() - started
                rows.append({"what": f"embeddings, 8 agents x 1 text, {label} (gated)", "unit": "vectors/s",
                             "concurrent": calls / seconds})
    finally:
        batcher.close()
    return rows


def run(short: bool = False, *, chat_model: str | None = None, embedding_model: str | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp, \
            escrow_service(0, escrows=1, amount_micro=10**12) as market:
        chat_id = chat_model or str(chat_twin(Path(tmp) / "smollm2-135m-shape"))
        embedding_id = embedding_model or str(encoder_twin(Path(tmp) / "minilm-l6-shape"))
        escrow_id = market.escrow_ids[0]
        return chat_rows(market, escrow_id, chat_id, short) + embedding_rows(market, escrow_id, embedding_id, short)


def format_table(rows: list[dict]) -> str:
    header = f"{'':44} {'ungated':>10} {'gated':>10} {'gated/ungated':>13} {'gate share (median, max)':>26}"
    lines = [header, "-" * len(header)]
    for row in rows:
        if "concurrent" in row:
            lines.append(f"{row['what']:60} {row['concurrent']:>10.1f} {row['unit']}")
            continue
        plain, paid = _rate(row["ungated"]), _rate(row["gated"])
        share = f"{statistics.median(row['share']):.2%}, {max(row['share']):.2%}"
        lines.append(f"{row['what']:44} {plain:>10.1f} {paid:>10.1f} {paid / plain:>13.3f} {share:>26}"
                     f"   {row['unit']}, {len(row['gated'])} calls each")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--chat-model", help="a chat model folder or cached hub id (default: the SmolLM2 twin)")
    parser.add_argument("--embedding-model", help="an encoder folder or cached hub id (default: the MiniLM twin)")
    args = parser.parse_args(argv)
    print(banner(TITLE), flush=True)
    print(format_table(run(args.short, chat_model=args.chat_model, embedding_model=args.embedding_model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

