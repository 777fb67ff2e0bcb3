"""The library's worker threads: they leave the termination signals to the main thread.

Python runs signal handlers only in the main thread, but the kernel may
deliver a process-directed signal such as the SIGINT of a Ctrl-C to any
thread that does not block it. When a worker thread takes it, CPython 3.11
(at least) marks the signal pending without waking the main thread's
evaluation loop, and a main thread that then only polls a lock with a timeout
(as :meth:`Failure.wait <multifd_zero.migration._failure.Failure.wait>` does
while channels sync) never raises ``KeyboardInterrupt``: ``multifd-zero demo``
ignored 7 Ctrl-Cs in 160 this way. Blocking those signals in every thread the
library starts makes the kernel deliver them to the main thread. The
synchronous signals stay open: ``csrc/file_guard.h`` catches the SIGBUS of a
shrunk file in the thread that reads it.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["ASYNC_SIGNALS", "WorkerThread"]

#: Sent by a terminal, a supervisor or ``kill``: the main thread's to handle.
ASYNC_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


class WorkerThread(threading.Thread):
    """A :class:`threading.Thread` that blocks :data:`ASYNC_SIGNALS` before it runs."""

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
        super().run()
