"""Length bucketing: on a CPU a batch of mixed lengths runs as a few passes of similar lengths, same answers."""

import itertools
import random

import pytest

from models.transformers_model import CPU_PASS_OVERHEAD_TOKENS, plan_buckets

SHORT_TEXTS = [
    "I love this, it is wonderful.",
    "ok",
    "The meeting has been moved to Thursday.",
    "Awful movie.",
    "Thanks so much for the quick reply!",
]
# Far past the tiny model's 128 tokens: truncated to 128, against a few tokens for each short text.
LONG_TEXT = " ".join(["wonderful", "terrible", "meeting", "zyxxqv"] * 100)


def cost(runs, lengths, overhead):
    return sum(overhead + len(run) * max(lengths[i] for i in run) for run in runs)


def covers_each_once(runs, count):
    return sorted(i for run in runs for i in run) == list(range(count))


# ---------------------------------------------------------------- the plan


def test_no_overhead_given_means_one_pass_in_order():
    assert plan_buckets([128, 5, 7, 5], None) == [[0, 1, 2, 3]]
    assert plan_buckets([40], 32) == [[0]]


def test_one_long_text_among_short_ones_gets_a_pass_of_its_own():
    lengths = [5, 6, 128, 5, 7, 6, 5, 5]
    runs = plan_buckets(lengths, 32)
    assert len(runs) == 2
    assert covers_each_once(runs, len(lengths))
    assert runs[-1] == [2]  # the long text alone, last (runs go from short to long)


def test_similar_lengths_stay_one_pass_in_their_order():
    # Padding 20-24 to 24 wastes 10 tokens: less than a pass costs.
    assert plan_buckets([24, 20, 22, 21, 24], CPU_PASS_OVERHEAD_TOKENS) == [[0, 1, 2, 3, 4]]
    assert plan_buckets([31] * 16, CPU_PASS_OVERHEAD_TOKENS) == [list(range(16))]


def test_the_bench_batch_is_split_in_a_few_runs():
    # Token lengths of bench_space.TEXTS (its tiny BPE tokenizer), twice: the bench's batch of 16.
    lengths = [14, 35, 28, 46, 16, 30, 42, 39] * 2
    runs = plan_buckets(lengths, 32)
    assert 2 <= len(runs) <= 4
    assert covers_each_once(runs, 16)
    assert cost(runs, lengths, 32) < 32 + 16 * 46


@pytest.mark.parametrize("seed", range(30))
def test_the_plan_is_the_cheapest_split_of_the_sorted_texts(seed):
    rng = random.Random(seed)
    count = rng.randint(2, 8)
    lengths = [rng.choice([rng.randint(3, 20), rng.randint(3, 130)]) for _ in range(count)]
    overhead = rng.choice([0, 8, 32, 100])
    runs = plan_buckets(lengths, overhead)
    assert covers_each_once(runs, count)
    order = sorted(range(count), key=lengths.__getitem__)
    cheapest = min(
        cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, count))], lengths, overhead)
        for k in range(count)
        for cuts in itertools.combinations(range(1, count), k)
    )
    assert cost(runs, lengths, overhead) == cheapest
    assert cost(runs, lengths, overhead) <= overhead + count * max(lengths)


# ---------------------------------------------------------------- the model


class CountingForward:
    """Wraps the torch model: records the shape of every forward pass."""

    def __init__(self, model):
        self.model = model
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, **inputs):
        self.shapes.append(tuple(inputs["input_ids"].shape))
        return self.model(**inputs)


@pytest.fixture
def counted(tiny_model, monkeypatch):
    counter = CountingForward(tiny_model._model)
    monkeypatch.setattr(tiny_model, "_model", counter)
    return counter


def test_a_cpu_model_buckets_by_default(tiny_model):
    assert tiny_model.device == "cpu"
    assert tiny_model.pass_overhead_tokens == CPU_PASS_OVERHEAD_TOKENS


def test_long_and_short_texts_run_apart_with_the_unbucketed_answers_in_order(tiny_model, counted, monkeypatch):
    batch = [SHORT_TEXTS[0], SHORT_TEXTS[1], LONG_TEXT, *SHORT_TEXTS[2:]]

    bucketed = tiny_model.predict_batch(batch)
    assert len(counted.shapes) >= 2
    assert sum(rows for rows, _ in counted.shapes) == len(batch)
    assert min(width for _, width in counted.shapes) < 128  # the short texts were not padded to 128

    counted.shapes.clear()
    monkeypatch.setattr(tiny_model, "pass_overhead_tokens", None)
    unbucketed = tiny_model.predict_batch(batch)
    assert counted.shapes == [(len(batch), 128)]

    one_by_one = [tiny_model.predict(text) for text in batch]
    assert len({round(p.score, 6) for p in one_by_one}) == len(batch)  # distinct: the order is checkable
    for answers in (unbucketed, one_by_one):
        assert [p.label for p in bucketed] == [p.label for p in answers]
        assert [p.score for p in bucketed] == pytest.approx([p.score for p in answers], abs=1e-4)


def test_left_padding_keeps_each_texts_own_columns(tiny_model, counted, monkeypatch):
    # A left-padding tokenizer puts the padding first: a pass must keep the last columns. (The tiny
    # RoBERTa itself answers differently once left-padded, so each pass is compared with its own
    # texts classified as a batch of their own, which is what the pass is.)
    monkeypatch.setattr(tiny_model._tokenizer, "padding_side", "left")
    bucketed = tiny_model.predict_batch([SHORT_TEXTS[0], LONG_TEXT, *SHORT_TEXTS[1:]])
    assert sorted(counted.shapes) == [(1, 128), (len(SHORT_TEXTS), 22)]

    monkeypatch.setattr(tiny_model, "pass_overhead_tokens", None)
    short_alone = tiny_model.predict_batch(SHORT_TEXTS)
    long_alone = tiny_model.predict(LONG_TEXT)
    expected = [short_alone[0], long_alone, *short_alone[1:]]
    assert [p.label for p in bucketed] == [p.label for p in expected]
    assert [p.score for p in bucketed] == pytest.approx([p.score for p in expected], abs=1e-4)


def test_texts_of_one_length_run_as_one_pass(tiny_model, counted):
    predictions = tiny_model.predict_batch(["I love this, it is wonderful."] * 6)
    assert len(counted.shapes) == 1
    # One pass, one answer: rows of one batch may differ in the last float bits (BLAS blocking), no more.
    assert len({p.label for p in predictions}) == 1
    assert [p.score for p in predictions] == pytest.approx([predictions[0].score] * 6, abs=1e-4)
