"""A slow, plainly written model of QEMU's multifd zero-page semantics: the tests' oracle.

Written from the behaviour of QEMU's ``migration/multifd-zero-page.c``,
``migration/ram.c`` and ``util/bufferiszero.c``, not from their code.
Everything here works on plain Python objects (``bytes``/``bytearray`` memory,
lists of offsets, a list of bools for the receivedmap) and walks the same steps,
in the same order, as QEMU does, so that the package can be compared with it
element for element.

Sections:

- ``ref_is_zero``: ``buffer_is_zero`` (every byte is zero);
- ``ref_partition``: the two-pointer loop of ``multifd_send_zero_page_detect``;
- ``ref_send_zero_page_detect`` / ``ref_save_zero_pages``: the send side with
  the detection modes, the stats and the ``ram_release_page`` rule;
- ``RefDestination``: the destination memory and receivedmap, with the
  multifd zero-page receive rule, the legacy ``ram_handle_zero`` and the
  normal-page receive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NONE = "none"
LEGACY = "legacy"
MULTIFD = "multifd"
MODES = (NONE, LEGACY, MULTIFD)

MULTIFD_PACKET_SIZE = 512 * 1024


# ------------------------------------------------------------------ buffer_is_zero


def ref_is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True if every byte of ``data`` is zero (an empty buffer is zero)."""
    return all(byte == 0 for byte in memoryview(data).tobytes())


def ref_page_is_zero(host: bytes | bytearray, offset: int, page_size: int) -> bool:
    """``buffer_is_zero(host + offset, page_size)``."""
    page = bytes(host[offset : offset + page_size])
    # bytes.count walks every byte, so this is still "every byte is zero".
    return page.count(0) == len(page)


def ref_zero_page_mask(host: bytes | bytearray, page_size: int) -> list[bool]:
    """One bool per page of ``host``: True where the page is all zero."""
    return [ref_page_is_zero(host, start, page_size) for start in range(0, len(host), page_size)]


def ref_page_count(page_size: int) -> int:
    """``multifd_ram_page_count()``: pages per packet (at least one)."""
    return max(1, MULTIFD_PACKET_SIZE // page_size)


# ------------------------------------------------------------------------ stats


@dataclass
class RefStats:
    """``mig_stats.normal_pages`` and ``mig_stats.zero_pages``."""

    normal_pages: int = 0
    zero_pages: int = 0

    def query_migrate(self, page_size: int) -> dict[str, int]:
        """The ``ram`` section of ``query-migrate`` for these counters."""
        return {
            "normal": self.normal_pages,
            "duplicate": self.zero_pages,
            "normal-bytes": self.normal_pages * page_size,
            "page-size": page_size,
        }


# ----------------------------------------------------------------- the send side


@dataclass
class PartitionResult:
    """What QEMU's loop leaves behind."""

    offsets: list[int]
    normal_num: int
    released: list[int] = field(default_factory=list)
    """Zero offsets in the order ``ram_release_page`` is called on them."""
    tests: int = 0
    """How many times ``buffer_is_zero`` ran."""


def ref_partition(host: bytes | bytearray, offsets: list[int], page_size: int) -> PartitionResult:
    """QEMU's ``multifd_send_zero_page_detect`` loop, literally.

    i starts at the front and j at the back. While i <= j: test the page at
    offset[i]; a normal page advances i; a zero page is swapped with
    offset[j], released, and j retreats (i stays: the page swapped in is
    tested next).
    """
    offset = list(offsets)
    released: list[int] = []
    tests = 0
    i = 0
    j = len(offset) - 1
    while i <= j:
        page_offset = offset[i]
        tests += 1
        if not ref_page_is_zero(host, page_offset, page_size):
            i += 1
            continue
        offset[i], offset[j] = offset[j], offset[i]
        released.append(page_offset)
        j -= 1
    return PartitionResult(offset, i, released, tests)


def ref_send_zero_page_detect(
    host: bytes | bytearray,
    offsets: list[int],
    page_size: int,
    stats: RefStats,
    *,
    mode: str = MULTIFD,
    release_ram: bool = False,
    in_postcopy: bool = False,
) -> PartitionResult:
    """The whole of ``multifd_send_zero_page_detect``: mode, stats, release rule.

    ``released`` holds what ``ram_release_page`` actually discards: empty
    unless release-ram is on and the source is in postcopy.
    """
    if mode == MULTIFD:
        result = ref_partition(host, offsets, page_size)
    else:
        result = PartitionResult(list(offsets), len(offsets))
    stats.normal_pages += result.normal_num
    stats.zero_pages += len(offsets) - result.normal_num
    if not (release_ram and in_postcopy):
        result.released = []
    return result


def ref_save_zero_pages(
    host: bytes | bytearray,
    offsets: list[int],
    page_size: int,
    stats: RefStats,
    *,
    mode: str = LEGACY,
    release_ram: bool = False,
    in_postcopy: bool = False,
) -> tuple[list[int], list[int], list[int]]:
    """Legacy ``save_zero_page`` on the main thread, page by page in queue order.

    Returns ``(normal, zero, released)``: the pages left for multifd, the zero
    pages sent as zero records, and the pages released.
    """
    if mode != LEGACY:
        return list(offsets), [], []
    normal: list[int] = []
    zero: list[int] = []
    released: list[int] = []
    for off in offsets:
        if ref_page_is_zero(host, off, page_size):
            stats.zero_pages += 1
            zero.append(off)
            if release_ram and in_postcopy:
                released.append(off)
        else:
            normal.append(off)
    return normal, zero, released


# ------------------------------------------------------------- the destination


class RefDestination:
    """Destination RAM and its receivedmap (one bool per page).

    ``fresh``: the pages not yet received are known to be zero (QEMU's own
    assumption about its destination RAM). When they are not, a first-time
    multifd zero page is checked and zeroed only if not zero, as
    ``ram_handle_zero`` does for the legacy records.
    """

    def __init__(self, memory: bytes | bytearray, page_size: int, *, fresh: bool = False) -> None:
        self.memory = bytearray(memory)
        self.page_size = page_size
        self.fresh = fresh
        self.received = [False] * (len(self.memory) // page_size)

    def page_index(self, offset: int) -> int:
        """``offset >> TARGET_PAGE_BITS``."""
        return offset // self.page_size

    def recv_zero_page_process(self, zero_offsets: list[int], *, postcopy_ram: bool) -> int:
        """``multifd_recv_zero_page_process`` (QEMU 10.1); returns pages written.

        For each offset: received = test bit; if postcopy-ram or received,
        memset the page; else, unless the memory is fresh, memset it if it is
        not zero (``ram_handle_zero``); if not received, set the bit.
        """
        written = 0
        for off in zero_offsets:
            received = self.received[self.page_index(off)]
            stale = not self.fresh and not ref_page_is_zero(self.memory, off, self.page_size)
            if postcopy_ram or received or stale:
                self.memory[off : off + self.page_size] = bytes(self.page_size)
                written += 1
            if not received:
                self.received[self.page_index(off)] = True
        return written

    def recv_legacy_zero_pages(self, offsets: list[int]) -> int:
        """``ram_handle_zero`` for each zero record: write only if not zero; set the bit."""
        written = 0
        for off in offsets:
            if not ref_page_is_zero(self.memory, off, self.page_size):
                self.memory[off : off + self.page_size] = bytes(self.page_size)
                written += 1
            self.received[self.page_index(off)] = True
        return written

    def recv_normal_pages(self, offsets: list[int], data: bytes | bytearray) -> int:
        """nocomp receive: set each page's bit, then place its data."""
        for k, off in enumerate(offsets):
            self.received[self.page_index(off)] = True
            self.memory[off : off + self.page_size] = data[
                k * self.page_size : (k + 1) * self.page_size
            ]
        return len(offsets)

    def bitmap_words(self) -> list[int]:
        """The receivedmap as 64-bit words, page i at bit i % 64 of word i // 64."""
        words = [0] * ((len(self.received) + 63) // 64)
        for index, bit in enumerate(self.received):
            if bit:
                words[index // 64] |= 1 << (index % 64)
        return words


def ref_gather(host: bytes | bytearray, offsets: list[int], page_size: int) -> bytes:
    """The normal pages' bytes in order: what the nocomp sender puts on the wire."""
    return b"".join(bytes(host[off : off + page_size]) for off in offsets)


# ------------------------------------------------------------ one batch end to end


@dataclass
class RefSendResult:
    """One batch after the source side: what goes where."""

    legacy_zero: list[int]
    offsets: list[int]
    normal_num: int
    released: list[int]

    @property
    def normal(self) -> list[int]:
        """Pages sent with their data."""
        return self.offsets[: self.normal_num]

    @property
    def zero(self) -> list[int]:
        """Pages sent as multifd zero pages."""
        return self.offsets[self.normal_num :]


def ref_send_batch(
    host: bytes | bytearray,
    queued: list[int],
    page_size: int,
    stats: RefStats,
    *,
    mode: str,
    release_ram: bool = False,
    in_postcopy: bool = False,
) -> RefSendResult:
    """Main thread (legacy check) then a multifd channel (detection) for one batch."""
    rest, legacy_zero, released = ref_save_zero_pages(
        host,
        queued,
        page_size,
        stats,
        mode=mode,
        release_ram=release_ram,
        in_postcopy=in_postcopy,
    )
    part = ref_send_zero_page_detect(
        host,
        rest,
        page_size,
        stats,
        mode=mode,
        release_ram=release_ram,
        in_postcopy=in_postcopy,
    )
    return RefSendResult(legacy_zero, part.offsets, part.normal_num, released + part.released)


def ref_apply_batch(
    dest: RefDestination, host: bytes | bytearray, sent: RefSendResult, *, postcopy_ram: bool
) -> int:
    """Destination side of one batch, in QEMU's order; returns zero pages written."""
    written = dest.recv_legacy_zero_pages(sent.legacy_zero)
    written += dest.recv_zero_page_process(sent.zero, postcopy_ram=postcopy_ram)
    dest.recv_normal_pages(sent.normal, ref_gather(host, sent.normal, dest.page_size))
    return written
