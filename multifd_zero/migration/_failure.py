"""The first error of a migration side, and the channels to close when it happens."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

from ..errors import MigrationAbortedError
from .transport import Channel

POLL = 0.05
"""Seconds between checks of the failure flag while a thread waits."""


class Failure:
    """Shared by the threads of one side: the first exception wins and closes every channel."""

    def __init__(self, channels: Iterable[Channel] = ()) -> None:
        self._lock = threading.Lock()
        self._channels = list(channels)
        self.event = threading.Event()
        self.error: BaseException | None = None

    def add_channel(self, channel: Channel) -> None:
        """Close ``channel`` too on failure (at once if the side has failed already)."""
        with self._lock:
            self._channels.append(channel)
            failed = self.error is not None
        if failed:
            channel.close()

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` if it is the first error, then close every channel."""
        with self._lock:
            if self.error is None:
                self.error = exc
            channels = list(self._channels)
        self.event.set()
        for channel in channels:
            with contextlib.suppress(OSError):  # closing never matters more than the error
                channel.close()

    def check(self) -> None:
        """Raise :class:`MigrationAbortedError` if the side has failed."""
        if self.event.is_set():
            raise MigrationAbortedError("the migration failed elsewhere") from self.error

    def wait_event(self, event: threading.Event, timeout: float, what: str) -> None:
        """Wait until ``event`` is set, within ``timeout`` seconds, giving up if the side fails."""
        deadline = time.monotonic() + timeout
        while not event.wait(POLL):  # bounded by the deadline
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
        self.check()

    def wait(self, acquire: threading.Semaphore, timeout: float, what: str) -> None:
        """Acquire ``acquire`` within ``timeout`` seconds, giving up if the side fails."""
        deadline = time.monotonic() + timeout
        while not acquire.acquire(timeout=POLL):  # bounded by the deadline
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
        self.check()
