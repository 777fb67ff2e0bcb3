"""The tqdm class every command's progress bar comes from, with a thread lock.

tqdm's default write lock includes a ``multiprocessing.RLock``. Since
Python 3.14 the default start method on Linux is forkserver, and under any
start method but fork that lock is a named POSIX semaphore registered with
multiprocessing's resource tracker, a helper process. After a Ctrl-C the
command ends with ``os._exit`` (:func:`.main.console`), the semaphore is never
unregistered, and the tracker prints a "leaked semaphore" warning on the
user's terminal after the one ``interrupted`` line. The bars here are drawn
from the threads of one process only, so a thread lock is all they need.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

__all__ = ["tqdm_class"]

_LOCK = threading.RLock()


def tqdm_class() -> Any:
    """tqdm's ``tqdm`` class, imported on first use, writing under a thread lock.

    Returns
    -------
    type
        ``tqdm.tqdm`` (typed ``Any``: tqdm ships no type information).
    """
    # Imported by name and lazily: only a run that shows a bar pays for it.
    tqdm: Any = importlib.import_module("tqdm").tqdm
    tqdm.set_lock(_LOCK)
    return tqdm
