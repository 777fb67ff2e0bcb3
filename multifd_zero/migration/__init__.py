"""The migration layer: a whole migration of RAM blocks over N channels.

- :mod:`~multifd_zero.migration.engine`: :func:`migrate`, which runs both sides;
- :mod:`~multifd_zero.migration.source` and
  :mod:`~multifd_zero.migration.destination`: the two sides, each the main
  channel plus one thread per multifd channel (QEMU's ``multifd_send_thread``
  and ``multifd_recv_thread``);
- :mod:`~multifd_zero.migration.transport`: in-process pipes, TCP and Unix
  sockets; :mod:`~multifd_zero.migration.process`: the destination as a child
  process; :mod:`~multifd_zero.migration.shm`: guest RAM shared with it.

This layer uses the facade (the package root) and the wire layer; nothing
below it imports it.
"""

from __future__ import annotations

from ..errors import MigrationAbortedError, MigrationError
from .engine import MigrationResult, migrate

__all__ = ["MigrationAbortedError", "MigrationError", "MigrationResult", "migrate"]
