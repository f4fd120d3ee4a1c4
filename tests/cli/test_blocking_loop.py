"""The blocking clients' private event loop: Ctrl-C cancels the call in flight, and a call
from the loop's own thread is refused instead of deadlocking."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest

from clients.blocking import _LoopThread


def test_ctrl_c_while_waiting_cancels_the_call():
    loop = _LoopThread("test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def slow_call() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a call that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def press_ctrl_c() -> None:
        assert started.wait(30)
        # A real SIGINT, as a terminal sends: it interrupts the main thread's wait.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(slow_call())
        assert cancelled.wait(30)
    finally:
        presser.join()
        loop.stop()


def test_ctrl_c_just_after_the_call_is_handed_to_the_loop_still_cancels_it(monkeypatch):
    """The window a real Ctrl-C can hit (CI did): the call is on the loop, but the caller is
    interrupted before it holds anything to cancel it by."""
    loop = _LoopThread("test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def slow_call() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    hand_over = loop.loop.call_soon_threadsafe

    def hand_over_then_interrupt(*args: Any, **kwargs: Any) -> Any:
        hand_over(*args, **kwargs)
        raise KeyboardInterrupt

    try:
        monkeypatch.setattr(loop.loop, "call_soon_threadsafe", hand_over_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run(slow_call())
        monkeypatch.undo()
        loop.run(asyncio.sleep(0.05))  # whatever the loop was handed has had its turn
        # Never started, or started and cancelled: not left running.
        assert not started.is_set() or cancelled.wait(5)
    finally:
        loop.stop()


def test_a_call_from_the_loops_own_thread_is_refused():
    loop = _LoopThread("test-loop")
    try:

        async def nested() -> str:
            async def inner() -> str:
                return "never"

            try:
                return loop.run(inner())
            except RuntimeError as exc:
                return str(exc)

        assert loop.run(nested()) == "a blocking client cannot be called from its own event loop"
    finally:
        loop.stop()
    loop.stop()  # stopping twice is harmless
