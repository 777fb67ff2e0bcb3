"""Save a running VM's memory through a live migration into a sparse snapshot, and restore it.

**Save.** :class:`SnapshotSaver` listens where a QEMU 10 source migrates to
(``migrate uri=...``) and plays the destination: it tells the main channel
from the multifd channels by peeking four bytes (``QEVM``), as
``migration_ioc_process_incoming`` (``migration/migration.c``) does; checks
each channel's handshake; and applies pages with this library's destination
rules into one anonymous mapping per RAM block: multifd zero pages with
:func:`~multifd_zero.recv_zero_page_process` (written only if received
before), multifd normal pages with :func:`~multifd_zero.recv_normal_pages`,
main-channel ``ZERO`` records with
:func:`~multifd_zero.recv_legacy_zero_pages` and ``PAGE`` records with
:func:`~multifd_zero.recv_normal_pages`. A ``MULTIFD_FLUSH`` on the main
channel waits until every channel has delivered one SYNC packet
(``multifd_recv_sync_main``, ``migration/multifd.c``), so pages of one dirty
round are never applied after records of the next. Once the stream has ended
cleanly the snapshot is written: one sparse raw image per block (``pwrite`` of
the non-zero pages only, then ``ftruncate``; zero pages stay holes), the
device state byte for byte, and ``manifest.json`` last and atomically. A
broken or hostile stream raises before anything is written.

**Restore.** :func:`restore` plays a QEMU 10 source towards a QEMU started
with ``-incoming defer``: the configuration and RAM sections, pages in
batches of :func:`~multifd_zero.multifd_ram_page_count` pages over the
multifd channels with zero pages detected as QEMU's source does it
(``multifd``, ``legacy`` or ``none``), or as main-channel records with 0
channels, then the saved device state verbatim. Holes of an image are known
to be zero and are not read, but are announced as QEMU's source would
announce those pages, so the destination's counts equal a QEMU source's.

Limitations: 4 KiB target pages (x86); precopy only (QEMU 10.0 refuses
multifd with postcopy-ram); no TLS, compression, XBZRLE, mapped-ram,
``x-ignore-shared``, return path or device-state multifd packets (each is a
clear error); machine types 7.2 and older (``multifd-flush-after-each-section``)
are not handled; guest RAM is held in anonymous memory until the stream has
ended (only the pages received are allocated).

Modules: ``connections`` (URIs and sockets), ``manifest`` (the folder's
format), ``save`` and ``restore``.
"""

from __future__ import annotations

from .connections import Progress, parse_uri
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    BlockInfo,
    Manifest,
    RestoreResult,
    SaveResult,
    block_file_name,
    load_manifest,
)
from .restore import restore
from .save import SnapshotSaver, save

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BlockInfo",
    "Manifest",
    "Progress",
    "RestoreResult",
    "SaveResult",
    "SnapshotSaver",
    "block_file_name",
    "load_manifest",
    "parse_uri",
    "restore",
    "save",
]
