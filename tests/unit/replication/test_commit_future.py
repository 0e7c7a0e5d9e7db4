"""CommitFuture: the cheap, uncancellable future of one replicated write behaves as a
``concurrent.futures.Future`` for every consumer Tessera has (blocking callers, callbacks, asyncio,
``wait``/``as_completed``)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, InvalidStateError, as_completed, wait
from concurrent.futures import TimeoutError as FutureTimeoutError

import pytest

from tessera.control_plane.replication._group_commit import CommitFuture, new_running_future

pytestmark = pytest.mark.timeout(30)


def _later(delay: float, fn: object, *args: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn(*args)  # type: ignore[operator]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_it_is_a_future_that_is_running_and_cannot_be_cancelled() -> None:
    fut = new_running_future()
    assert isinstance(fut, Future) and isinstance(fut, CommitFuture)
    assert fut.running() and not fut.done() and not fut.cancelled()
    assert fut.cancel() is False
    assert fut.running()
    with pytest.raises(RuntimeError):
        fut.set_running_or_notify_cancel()
    fut.set_result(7)
    assert fut.done() and not fut.running() and fut.result() == 7 and fut.exception() is None
    assert "finished" in repr(fut)


def test_result_and_exception_time_out_while_nothing_resolves_it() -> None:
    fut = CommitFuture()
    with pytest.raises(FutureTimeoutError):
        fut.result(timeout=0.05)
    with pytest.raises(FutureTimeoutError):
        fut.exception(timeout=0.05)
    assert not fut.done()


def test_a_blocked_caller_is_woken_by_a_result_from_another_thread() -> None:
    fut = CommitFuture()
    _later(0.1, fut.set_result, "committed")
    assert fut.result(timeout=10) == "committed"


def test_a_blocked_caller_is_woken_by_an_exception_from_another_thread() -> None:
    fut = CommitFuture()
    _later(0.1, fut.set_exception, ValueError("refused"))
    with pytest.raises(ValueError, match="refused"):
        fut.result(timeout=10)
    assert isinstance(fut.exception(timeout=0), ValueError)


def test_many_threads_blocked_on_one_future_all_wake() -> None:
    fut = CommitFuture()
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(fut.result(timeout=10))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    fut.set_result(1)
    for t in threads:
        t.join(10)
    assert got == [1] * 8


def test_callbacks_run_once_in_order_and_late_ones_at_once() -> None:
    fut = CommitFuture()
    calls: list[tuple[str, object]] = []
    fut.add_done_callback(lambda f: calls.append(("first", f.result())))
    fut.add_done_callback(lambda f: 1 / 0)  # a failing callback is logged, the others still run
    fut.add_done_callback(lambda f: calls.append(("second", f.result())))
    assert calls == []
    fut.set_result("x")
    assert calls == [("first", "x"), ("second", "x")]
    fut.add_done_callback(lambda f: calls.append(("late", f.result())))
    assert calls[-1] == ("late", "x")


def test_it_is_resolved_once() -> None:
    fut = CommitFuture()
    fut.set_result(1)
    with pytest.raises(InvalidStateError):
        fut.set_result(2)
    with pytest.raises(InvalidStateError):
        fut.set_exception(ValueError())
    assert fut.result() == 1


def test_wait_and_as_completed_see_it_finish() -> None:
    a, b, c = CommitFuture(), CommitFuture(), CommitFuture()
    _later(0.05, b.set_result, "b")
    done, pending = wait([a, b], timeout=10, return_when="FIRST_COMPLETED")
    assert done == {b} and pending == {a}
    _later(0.05, c.set_exception, KeyError("c"))
    done, pending = wait([a, c], timeout=10, return_when=FIRST_EXCEPTION)
    assert done == {c}
    _later(0.05, a.set_result, "a")
    assert [f.result() for f in as_completed([a], timeout=10)] == ["a"]


def test_asyncio_awaits_it_and_cancelling_the_awaiter_leaves_the_write_alone() -> None:
    async def main() -> tuple[object, bool]:
        fut = CommitFuture()
        asyncio.get_running_loop().call_later(0.05, fut.set_result, "applied")
        value = await asyncio.wrap_future(fut)
        other = CommitFuture()
        awaiting = asyncio.ensure_future(asyncio.wrap_future(other))
        await asyncio.sleep(0)
        awaiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiting
        other.set_result("still committed")
        return value, other.result() == "still committed"

    assert asyncio.run(main()) == ("applied", True)
