"""What a file is, from its first bytes: raw memory, an ELF core dump, or a container.

:func:`sniff` names the formats that hold guest memory or a disk in a layout
of their own, where scanning the bytes as they lie would count the container,
not the memory: QEMU's disk images (``qcow2``, ``qed``, ``vmdk``, ``vdi``,
``vhdx``, ``vpc``, ``parallels``, ``bochs``, LUKS), kdump-compressed dumps
(QEMU's ``dump-guest-memory -z/-l/-s`` and ``makedumpfile``), and QEMU
migration streams (``migrate`` to a file, ``savevm``). Each is refused with a
:class:`~multifd_zero.errors.FileFormatError` that says what the file is and
how to get a raw image.

ELF core dumps (QEMU's ``dump-guest-memory`` without a format, ``virsh dump
--memory-only``) hold guest memory as ``PT_LOAD`` segments; :func:`elf_segments`
reads their table so that the scanner can check the pages by guest physical
address (``p_paddr``), not by file offset (the first segment of a QEMU dump
starts at a file offset that is not page-aligned).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FileFormatError

__all__ = ["SNIFF_BYTES", "LoadSegment", "elf_segments", "sniff"]

SNIFF_BYTES = 4096
"""Bytes :func:`sniff` needs from the start of a file."""

_RAW_HINT = "qemu-img convert -O raw {path} {path}.raw"
_DUMP_HINT = (
    "dump the guest again as ELF (QMP dump-guest-memory without 'format', "
    "or virsh dump --memory-only --format elf), which scan reads"
)
_STREAM_HINT = (
    "load it into a QEMU started with -incoming and run dump-guest-memory "
    "(without 'format') for an ELF dump scan reads, or pmemsave for a raw image"
)

# (offset, magic, what the file is, how to get something scan reads)
_MAGICS: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"QFI\xfb", "a qcow2 disk image", _RAW_HINT),
    (0, b"QED\x00", "a QED disk image", _RAW_HINT),
    (0, b"KDMV", "a VMDK disk image (sparse extent)", _RAW_HINT),
    (0, b"COWD", "a VMDK disk image (ESX sparse extent)", _RAW_HINT),
    (0, b"# Disk DescriptorFile", "a VMDK descriptor", _RAW_HINT),
    (0x40, b"\x7f\x10\xda\xbe", "a VDI disk image", _RAW_HINT),
    (0, b"vhdxfile", "a VHDX disk image", _RAW_HINT),
    (0, b"conectix", "a VHD (vpc) disk image", _RAW_HINT),
    (0, b"WithoutFreeSpace", "a Parallels disk image", _RAW_HINT),
    (0, b"WithouFreSpacExt", "a Parallels disk image", _RAW_HINT),
    (0, b"Bochs Virtual HD Image", "a Bochs disk image", _RAW_HINT),
    (0, b"LUKS\xba\xbe", "a LUKS volume", "cryptsetup open it and scan the mapper device"),
    (0, b"KDUMP   ", "a kdump-compressed dump", _DUMP_HINT),
    (0, b"DISKDUMP", "a diskdump-compressed dump", _DUMP_HINT),
    (0, b"makedumpfile", "a flattened makedumpfile dump", _DUMP_HINT),
    (0, b"QEVM", "a QEMU migration stream", _STREAM_HINT),
)

_ELF_MAGIC = b"\x7fELF"
_ET_CORE = 4
_PT_LOAD = 1
_PN_XNUM = 0xFFFF


def sniff(head: bytes, path: str) -> str:
    """Return ``"raw"`` or ``"elf"`` for the first bytes ``head`` of ``path``.

    Raises
    ------
    FileFormatError
        ``head`` starts a container (see the module documentation), or an ELF
        file that is not a core dump; the message names the format and how to
        get a raw image.
    """
    for offset, magic, what, hint in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            raise FileFormatError(f"{path}: {what}, not raw memory; {hint.format(path=path)}")
    if head[:4] == _ELF_MAGIC:
        if len(head) < 20:
            raise FileFormatError(f"{path}: a truncated ELF header")
        order = "<" if head[5] == 1 else ">"
        (e_type,) = struct.unpack_from(order + "H", head, 16)
        if e_type != _ET_CORE:
            raise FileFormatError(
                f"{path}: an ELF file of type {e_type}, not a core dump (type 4); "
                "scan reads ELF core dumps (dump-guest-memory) and raw images"
            )
        return "elf"
    return "raw"


@dataclass(frozen=True)
class LoadSegment:
    """One ``PT_LOAD`` program header: guest memory at ``paddr`` held at ``offset``.

    The ``memsz - filesz`` bytes after the file's part read as zero.
    """

    offset: int
    paddr: int
    filesz: int
    memsz: int


def elf_segments(read_at: object, file_size: int, path: str) -> list[LoadSegment]:
    """Return the ``PT_LOAD`` segments of the ELF core dump ``path``, by guest address.

    Parameters
    ----------
    read_at : callable
        ``read_at(offset, length) -> bytes``, reading the file.
    file_size : int
        The file's size, to check that every segment lies inside it.
    path : str
        For messages.

    Raises
    ------
    FileFormatError
        A malformed or truncated header, program header table or segment.
    """
    read = read_at  # typed loosely: any (int, int) -> bytes
    head: bytes = read(0, 64)  # type: ignore[operator]
    if len(head) < 52:
        raise FileFormatError(f"{path}: a truncated ELF header")
    is64 = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if is64:
        if len(head) < 64:
            raise FileFormatError(f"{path}: a truncated ELF header")
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        shentsize = struct.unpack_from(order + "H", head, 58)[0]
        ph_format, ph_size = order + "IIQQQQQQ", 56
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
        shentsize = struct.unpack_from(order + "H", head, 46)[0]
        ph_format, ph_size = order + "IIIIIIII", 32
    if phnum == _PN_XNUM:
        # More than 65534 segments: the count is in section header 0's sh_info.
        sh0: bytes = read(shoff, shentsize)  # type: ignore[operator]
        info_at = 44 if is64 else 28
        if len(sh0) < info_at + 4:
            raise FileFormatError(f"{path}: a truncated ELF section header")
        (phnum,) = struct.unpack_from(order + "I", sh0, info_at)
    if phnum and phentsize < ph_size:
        raise FileFormatError(f"{path}: ELF program headers of {phentsize} bytes")
    if phoff + phnum * phentsize > file_size:
        raise FileFormatError(f"{path}: the ELF program header table ends past the file")
    table: bytes = read(phoff, phnum * phentsize)  # type: ignore[operator]
    segments = []
    for index in range(phnum):
        fields = struct.unpack_from(ph_format, table, index * phentsize)
        if is64:
            p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = fields
        else:
            p_type, p_offset, _, p_paddr, p_filesz, p_memsz, _, _ = fields
        if p_type != _PT_LOAD:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > file_size:
            raise FileFormatError(
                f"{path}: PT_LOAD segment {index} (file offset {p_offset:#x}, "
                f"{p_filesz} bytes) does not fit in the file of {file_size} bytes: "
                "a truncated dump?"
            )
        segments.append(LoadSegment(p_offset, p_paddr, p_filesz, p_memsz))
    if not segments:
        raise FileFormatError(f"{path}: an ELF core dump without PT_LOAD segments")
    segments.sort(key=lambda s: s.paddr)
    return segments
