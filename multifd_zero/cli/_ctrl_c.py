"""A Ctrl-C always ends the program: the one ``interrupted`` line, then exit 130.

Normally the main thread gets ``KeyboardInterrupt``, prints the line and
exits (:func:`.main.console`). But CPython 3.11 can leave a SIGINT pending
without ever raising it in the main thread while other threads run: its C
handler marks the signal, and a worker thread that then recomputes the
interpreter's "eval breaker" drops the mark, since only the main thread may
handle signals. ``multifd-zero demo`` then migrated on for 15 s and more
after a Ctrl-C (9 runs in 160, 19,170 rounds into one of them), whichever
thread the kernel delivered the signal to.

The C handler also writes the signal's number to the wakeup fd
(:func:`signal.set_wakeup_fd`) at once, in any thread. A watcher thread reads
it; if the main thread has not printed the line within :data:`GRACE` seconds,
the watcher prints it and ends the process, as the main thread would have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

from .._threads import WorkerThread

__all__ = ["GRACE", "announce", "name_line", "watch"]

#: Seconds the main thread has to print the line itself after a Ctrl-C.
GRACE = 5.0

_lock = threading.Lock()
_announced = False
_line = "multifd-zero: interrupted"
_keep: list[socket.socket] = []


def name_line(line: str) -> None:
    """The line to print on Ctrl-C, once the command is known."""
    global _line
    with _lock:
        _line = line


def announce() -> bool:
    """Print the interrupted line unless it was printed already; True if this call did."""
    global _announced
    with _lock:
        if _announced:
            return False
        _announced = True
        with contextlib.suppress(OSError, ValueError):
            print(_line, file=sys.stderr, flush=True)
        return True


def watch(status: int) -> None:
    """From the main thread: end the process ``GRACE`` s after a Ctrl-C the main thread missed."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    # Both ends live as long as the process: the C handler writes to the
    # writer's descriptor number, which must never be closed and reused.
    _keep.extend((reader, writer))
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def wait_for_ctrl_c() -> None:
        while signal.SIGINT not in reader.recv(64):  # other handled signals: keep waiting
            pass
        done = threading.Event()
        done.wait(GRACE)  # the main thread prints and exits meanwhile, normally
        if announce():
            os._exit(status)

    WorkerThread(target=wait_for_ctrl_c, name="multifd-zero-ctrl-c", daemon=True).start()
