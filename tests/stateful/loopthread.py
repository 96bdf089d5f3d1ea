"""A trio loop on a thread of its own, for hypothesis state machines: rules are synchronous,
the machine under test is a set of trio tasks.  The loop enters an async context manager
(an engine's ``running()``, a swap rig) and each rule calls into it with ``trio.from_thread``;
nothing else touches what runs there, so its state is only ever seen between two of its
own steps."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import trio
import trio.lowlevel

T = TypeVar("T")


class LoopThread:
    """Runs ``async with context(): <wait for close()>`` in a trio loop on a new thread."""

    def __init__(self, context: Callable[[], AbstractAsyncContextManager[object]]) -> None:
        self._context = context
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="machine-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("loop thread did not start")
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, re-raised there
            self.error = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with self._context():
            self._ready.set()
            await self._stop.wait()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the loop and return its result."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the loop, between two of its steps."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        """Leave the context (an engine writes everything back) and end the loop."""
        if self._thread.is_alive() and self._stop is not None and self._token is not None:
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive(), "loop thread did not stop"
        if self.error is not None:
            raise self.error
