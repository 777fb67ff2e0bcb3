"""HMP ``info ramblock`` as QEMU 7.2 and QEMU 10 print it, parsed by header name.

The rows are made with QEMU's own formats (``ram_block_format`` in QEMU's
``system/physmem.c``; ``softmmu/physmem.c`` in 7.2), so a parser that reads
columns by position (the size a host address in QEMU 10) fails here without
a QEMU. The ``%`` formats are QEMU's printf formats, copied on purpose.
"""

from __future__ import annotations

from support.qemu_vm import parse_ramblock

BLOCKS = [
    # name, page size text, offset, used, total, host address, read-only
    ("pc.ram", "4 KiB", 0, 0x4000000, 0x4000000, 0x7F0000000000, False),
    ("/rom@etc/acpi/tables", "4 KiB", 0x4100000, 0x20000, 0x200000, 0x7F1000000000, False),
    ("0000:00:02.0/virtio-net-pci.rom", "4 KiB", 0x4400000, 0x40000, 0x40000, 0x7F2, True),
    ("mem1", "2 MiB", 0x4500000, 0x200000, 0x200000, 0x7F3000000000, False),
]


def qemu_7_2() -> str:
    out = "%24s %8s  %18s %18s %18s\n" % ("Block Name", "PSize", "Offset", "Used", "Total")  # noqa: UP031
    for name, psize, offset, used, total, _, _ in BLOCKS:
        out += "%24s %8s  0x%016x 0x%016x 0x%016x\n" % (  # noqa: UP031
            name, psize, offset, used, total,
        )  # fmt: skip
    return out


def qemu_10() -> str:
    out = "%24s %8s  %18s %18s %18s %18s %3s\n" % (  # noqa: UP031
        "Block Name", "PSize", "Offset", "Used", "Total", "HVA", "RO",
    )  # fmt: skip
    for name, psize, offset, used, total, hva, ro in BLOCKS:
        out += "%24s %8s  0x%016x 0x%016x 0x%016x 0x%016x %3s\n" % (  # noqa: UP031
            name, psize, offset, used, total, hva, "ro" if ro else "rw",
        )  # fmt: skip
    return out


def test_both_versions_parse_to_the_same_blocks() -> None:
    old, new = parse_ramblock(qemu_7_2()), parse_ramblock(qemu_10())
    assert list(old) == list(new) == [b[0] for b in BLOCKS]
    for name, psize, offset, used, total, hva, ro in BLOCKS:
        size = 4096 if psize == "4 KiB" else 2 << 20
        for parsed in (old[name], new[name]):
            assert (parsed.page_size, parsed.offset, parsed.used, parsed.total) == (
                size, offset, used, total,
            )  # fmt: skip
        assert old[name].hva is None and old[name].readonly is None
        assert (new[name].hva, new[name].readonly) == (hva, ro)
