"""DynamicBatcher: concurrent callers share predict_batch calls, each getting its own answer or error.

No timing assertions: where a test needs requests to pile up, the fake model's first call waits
on an event until they have all been queued.
"""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from models import DynamicBatcher, EmptyTextError, Prediction

# A broken batcher tends to hang its callers rather than fail them: bound every test.
pytestmark = pytest.mark.timeout(60)

WAIT_S = 20  # a generous bound for "this should have happened": only reached when the code is broken


def echo_prediction(text: str) -> Prediction:
    """A fake answer that identifies its text: 'item-17' -> score 0.17."""
    return Prediction("neutral", int(text.rsplit("-", 1)[1]) / 100)


class FakeModel:
    """predict_batch that records its batches; the first call can be held until `release` is set."""

    def __init__(self, *, hold_first_call: bool = False, fail_on_call: int | None = None):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.first_call_started = threading.Event()
        if not hold_first_call:
            self.release.set()
        self.fail_on_call = fail_on_call
        self._lock = threading.Lock()

    def predict_batch(self, texts):
        with self._lock:
            self.batches.append(list(texts))
            call_number = len(self.batches)
        if call_number == 1:
            self.first_call_started.set()
        if call_number == 1 and not self.release.wait(WAIT_S):
            raise AssertionError("the held first batch was never released")
        if call_number == self.fail_on_call:
            raise RuntimeError("the model broke on this batch")
        return [echo_prediction(text) for text in texts]


class CountingBatcher(DynamicBatcher):
    """Counts requests as they are queued, so a test knows when all of them are waiting."""

    def __init__(self, *args, **kwargs):
        self.queued = threading.Semaphore(0)
        super().__init__(*args, **kwargs)

    def submit_future(self, text):
        future = super().submit_future(text)
        self.queued.release()
        return future


def wait_until_queued(batcher: CountingBatcher, count: int) -> None:
    for _ in range(count):
        assert batcher.queued.acquire(timeout=WAIT_S), "a request was never queued"


def test_concurrent_callers_each_get_their_own_answer_from_the_real_model(tiny_model):
    texts = [f"message number {index}: {'great ' * (index % 5)}{'awful ' * (index % 3)}day" for index in range(32)]
    expected = {text: tiny_model.predict(text) for text in texts}
    inputs = texts + ["", "   ", "\n"] * 2  # empty ones fail on their own, nobody else's
    start = threading.Barrier(len(inputs))
    calls = []

    def counting_predict_batch(batch):
        calls.append(len(batch))
        return tiny_model.predict_batch(batch)

    def call(text):
        start.wait(WAIT_S)
        try:
            return batcher.submit(text)
        except EmptyTextError as error:
            return error

    with DynamicBatcher(counting_predict_batch, max_batch_size=16, max_wait_ms=5) as batcher:
        with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
            results = dict(zip(inputs, pool.map(call, inputs, timeout=WAIT_S)))  # keyed by text: empty ones collapse

    for text in texts:
        assert results[text].label == expected[text].label
        assert results[text].score == pytest.approx(expected[text].score, abs=1e-4)
    for empty in ["", "   ", "\n"]:
        assert isinstance(results[empty], EmptyTextError)
    assert sum(calls) == len(texts)  # empty texts never reached the model
    assert max(calls) <= 16


def test_each_caller_gets_its_own_result_and_batches_are_grouped():
    model = FakeModel(hold_first_call=True)
    texts = [f"item-{index}" for index in range(32)]
    with CountingBatcher(model.predict_batch, max_batch_size=16, max_wait_ms=5) as batcher:
        with ThreadPoolExecutor(max_workers=len(texts)) as pool:
            futures = {text: pool.submit(batcher.submit, text) for text in texts}
            wait_until_queued(batcher, len(texts))
            model.release.set()
            results = {text: future.result(WAIT_S) for text, future in futures.items()}

    assert results == {text: echo_prediction(text) for text in texts}
    assert sorted(text for batch in model.batches for text in batch) == sorted(texts)  # each exactly once
    assert len(model.batches) < len(texts)  # callers shared forward passes
    assert len(model.batches) <= 3  # 1 held call, then the other 31 in batches of at most 16
    assert all(len(batch) <= 16 for batch in model.batches)


def test_a_failing_batch_fails_only_its_own_callers():
    model = FakeModel(hold_first_call=True, fail_on_call=2)
    with DynamicBatcher(model.predict_batch, max_batch_size=16, max_wait_ms=0) as batcher:
        held = batcher.submit_future("item-0")
        assert model.first_call_started.wait(WAIT_S)  # the worker is busy with item-0 alone
        doomed = [batcher.submit_future(f"item-{index}") for index in range(1, 4)]
        model.release.set()  # call 1 answers; the three waiting requests form call 2, which raises
        assert held.result(WAIT_S) == echo_prediction("item-0")
        for future in doomed:
            with pytest.raises(RuntimeError, match="broke on this batch"):
                future.result(WAIT_S)
        # The worker survives a failed batch.
        assert batcher.submit("item-9") == echo_prediction("item-9")
    assert model.batches[1] == ["item-1", "item-2", "item-3"]


def test_wrong_number_of_results_is_an_error_for_that_batch():
    with DynamicBatcher(lambda texts: [], max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="0 results for 1 texts"):
            batcher.submit("item-1")


@pytest.mark.parametrize("empty", ["", "  \t", None])
def test_empty_text_fails_in_the_caller_and_is_never_batched(empty):
    model = FakeModel()
    with DynamicBatcher(model.predict_batch) as batcher:
        with pytest.raises(EmptyTextError):
            batcher.submit(empty)
        assert batcher.submit("item-5") == echo_prediction("item-5")
    assert model.batches == [["item-5"]]


def test_close_answers_what_is_queued_then_refuses_new_work():
    model = FakeModel(hold_first_call=True)
    batcher = CountingBatcher(model.predict_batch, max_wait_ms=0)
    queued = [batcher.submit_future(f"item-{index}") for index in range(5)]
    wait_until_queued(batcher, 5)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    deadline = time.monotonic() + WAIT_S
    while not batcher.closed and time.monotonic() < deadline:  # closed is set before close() waits
        time.sleep(0.001)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("item-6")
    model.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert [future.result(0) for future in queued] == [echo_prediction(f"item-{index}") for index in range(5)]
    assert not batcher._worker.is_alive()
    batcher.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(batcher.submit_async("item-7"))


def test_async_callers_share_batches_without_blocking_the_event_loop():
    model = FakeModel(hold_first_call=True)

    async def scenario(batcher):
        calls = [asyncio.ensure_future(batcher.submit_async(f"item-{index}")) for index in range(10)]
        # If submit_async blocked the loop, this line would never run and the held batch would time out.
        await asyncio.sleep(0)
        model.release.set()
        with pytest.raises(EmptyTextError):
            await batcher.submit_async(" ")
        return await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)

    with DynamicBatcher(model.predict_batch, max_batch_size=16, max_wait_ms=5) as batcher:
        results = asyncio.run(scenario(batcher))
    assert results == [echo_prediction(f"item-{index}") for index in range(10)]
    assert len(model.batches) < 10


def test_a_cancelled_async_caller_is_left_out_and_does_not_disturb_the_others():
    model = FakeModel(hold_first_call=True)

    async def scenario(batcher):
        first = asyncio.ensure_future(batcher.submit_async("item-0"))
        assert await asyncio.to_thread(model.first_call_started.wait, WAIT_S)
        given_up = asyncio.ensure_future(batcher.submit_async("item-1"))
        kept = asyncio.ensure_future(batcher.submit_async("item-2"))
        await asyncio.sleep(0)
        given_up.cancel()
        # Let the loop pass the cancellation on to the batcher's Future before the worker moves on.
        for _ in range(3):
            await asyncio.sleep(0)
        model.release.set()
        return await asyncio.wait_for(first, WAIT_S), await asyncio.wait_for(kept, WAIT_S), given_up.cancelled()

    with DynamicBatcher(model.predict_batch, max_wait_ms=0) as batcher:
        first, kept, cancelled = asyncio.run(scenario(batcher))
    assert (first, kept, cancelled) == (echo_prediction("item-0"), echo_prediction("item-2"), True)
    assert model.batches == [["item-0"], ["item-2"]]


@pytest.mark.parametrize(("size", "wait"), [(0, 5), (16, -1)])
def test_nonsense_settings_are_refused(size, wait):
    with pytest.raises(ValueError):
        DynamicBatcher(FakeModel().predict_batch, max_batch_size=size, max_wait_ms=wait)
