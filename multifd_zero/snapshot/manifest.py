"""A snapshot folder: one sparse image per RAM block, the device state, and ``manifest.json``.

Written last and atomically, so that an interrupted save never looks complete;
read back with every field checked (:func:`load_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import (
    scan_zero_pages,
    zero_page_mask,
)
from ..errors import SnapshotError, StreamError
from ..wire.savevm import (
    check_device_state,
)
from .connections import MAX_CHANNELS, U32

FORMAT = "multifd-zero-snapshot"
"""The manifest's ``format``."""


FORMAT_VERSION = 1
"""The manifest's ``version``."""


MANIFEST = "manifest.json"


DEVICE_STATE_FILE = "device-state.bin"


PAGE_SIZE = 4096


def block_file_name(index: int, idstr: str) -> str:
    """Return the image file name of block ``index`` named ``idstr``: safe and unique.

    The index makes names unique (two idstrs may sanitise alike); every byte
    other than letters, digits, ``.``, ``_`` and ``-`` becomes ``_``.

    Examples
    --------
    >>> block_file_name(1, "/rom@etc/acpi/tables")
    '01-_rom_etc_acpi_tables.img'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", idstr)[:80]
    return f"{index:02d}-{safe}.img"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,120}$")


@dataclass(frozen=True)
class BlockInfo:
    """One RAM block of a snapshot.

    Attributes
    ----------
    idstr : str
        QEMU's block name.
    length : int
        ``used_length`` in bytes.
    file : str
        The image's file name in the snapshot directory.
    data_pages : int
        Non-zero pages stored in the image (the others are holes).
    normal, duplicate : int
        Pages of this block received (save) or sent (restore) with data and as zero pages.
    """

    idstr: str
    length: int
    file: str
    data_pages: int = 0
    normal: int = 0
    duplicate: int = 0


@dataclass(frozen=True)
class Manifest:
    """A snapshot's ``manifest.json``, validated by :func:`load_manifest`.

    Attributes
    ----------
    format : str
        :data:`~multifd_zero.snapshot.FORMAT`.
    version : int
        :data:`~multifd_zero.snapshot.FORMAT_VERSION`.
    machine_type : str
        From the configuration section, e.g. ``pc-i440fx-10.0``.
    configuration : bytes
        The configuration section to send on restore.
    page_size : int
    blocks : tuple of BlockInfo
        In the source's ``MEM_SIZE`` order.
    ram_section_id, ram_instance_id, ram_version_id : int
        The RAM section's header.
    device_state_file : str
    device_state_length : int
    device_state_sha256 : str
    commands : tuple of str
        Commands seen before the RAM END section (``SWITCHOVER_START``).
    normal, duplicate : int
        Pages received with data and as zero pages (QEMU's ``query-migrate`` names).
    channels : int
        The source's multifd channels (0: multifd off).
    uuid : bytes
        The uuid of the source's handshakes (zero without multifd).
    complete : bool
        Always True for a manifest :func:`load_manifest` returns.
    """

    format: str
    version: int
    machine_type: str
    configuration: bytes
    page_size: int
    blocks: tuple[BlockInfo, ...]
    ram_section_id: int
    ram_instance_id: int
    ram_version_id: int
    device_state_file: str
    device_state_length: int
    device_state_sha256: str
    commands: tuple[str, ...]
    normal: int
    duplicate: int
    channels: int
    uuid: bytes
    complete: bool

    @property
    def ram_bytes(self) -> int:
        """Sum of the block lengths."""
        return sum(block.length for block in self.blocks)


@dataclass(frozen=True)
class SaveResult:
    """What :meth:`SnapshotSaver.wait` received and wrote.

    Attributes
    ----------
    directory : str
    manifest : Manifest
    normal, duplicate : int
        Pages received with data and as zero pages (every dirty round counted,
        as QEMU's source counts them in ``query-migrate``).
    normal_bytes : int
        ``normal * page_size``.
    transferred : int
        Bytes received on all channels.
    channels : int
    seconds : float
        From the first connection to the manifest's rename.
    gb_per_s : float
        ``transferred / seconds / 1e9``.
    blocks : tuple of BlockInfo
    """

    directory: str
    manifest: Manifest
    normal: int
    duplicate: int
    normal_bytes: int
    transferred: int
    channels: int
    seconds: float
    gb_per_s: float
    blocks: tuple[BlockInfo, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        out = asdict(self)
        out["manifest"] = manifest_dict(self.manifest)
        return out


@dataclass(frozen=True)
class RestoreResult:
    """What :func:`restore` sent.

    Attributes
    ----------
    directory : str
    normal, duplicate : int
        Pages sent with data and as zero pages (``query-migrate`` names).
    normal_bytes : int
    transferred : int
        Bytes sent on all channels.
    channels : int
    zero_page_detection : str
    seconds : float
    gb_per_s : float
        ``ram_bytes / seconds / 1e9``: guest memory restored per second.
    hole_pages : int
        Pages not read because they lie in holes of the images.
    blocks : tuple of BlockInfo
    """

    directory: str
    normal: int
    duplicate: int
    normal_bytes: int
    transferred: int
    channels: int
    zero_page_detection: str
    seconds: float
    gb_per_s: float
    hole_pages: int
    blocks: tuple[BlockInfo, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return asdict(self)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        written = os.pwrite(fd, view[: 64 << 20], offset)
        view = view[written:]
        offset += written


def write_image(
    path: Path, host: Any, length: int, candidates: npt.NDArray[np.bool_] | None = None
) -> int:
    """Write the non-zero pages of ``host`` at their offsets, then set the length; return them.

    With ``candidates`` (one flag per page), only the flagged pages are read:
    the others are known to be zero.
    """
    if candidates is None:
        data = np.flatnonzero(~zero_page_mask(host, PAGE_SIZE))
    else:
        maybe = np.flatnonzero(candidates).astype(np.uint64)
        zero = scan_zero_pages(host, maybe * np.uint64(PAGE_SIZE), PAGE_SIZE)
        data = maybe[~zero].astype(np.int64)
    view = memoryview(host).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if data.size:
            # Runs of consecutive non-zero pages: one pwrite each.
            breaks = np.flatnonzero(np.diff(data) != 1) + 1
            starts = np.concatenate(([data[0]], data[breaks]))
            ends = np.concatenate((data[breaks - 1], [data[-1]])) + 1
            for first, last in zip(starts.tolist(), ends.tolist(), strict=True):
                lo, hi = first * PAGE_SIZE, last * PAGE_SIZE
                _pwrite_all(fd, view[lo:hi], lo)
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)
    return int(data.size)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _pwrite_all(fd, memoryview(data), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return {
        "format": manifest.format,
        "version": manifest.version,
        "complete": manifest.complete,
        "machine_type": manifest.machine_type,
        "configuration": manifest.configuration.hex(),
        "page_size": manifest.page_size,
        "ram_section": {
            "section_id": manifest.ram_section_id,
            "instance_id": manifest.ram_instance_id,
            "version_id": manifest.ram_version_id,
        },
        "blocks": [asdict(block) for block in manifest.blocks],
        "device_state": {
            "file": manifest.device_state_file,
            "length": manifest.device_state_length,
            "sha256": manifest.device_state_sha256,
        },
        "commands": list(manifest.commands),
        "normal": manifest.normal,
        "duplicate": manifest.duplicate,
        "channels": manifest.channels,
        "uuid": manifest.uuid.hex(),
    }


def _get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise SnapshotError(f"{where}: {key!r} is missing")
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SnapshotError(f"{where}: {key!r} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise SnapshotError(f"{where}: {key!r} must be a {kind.__name__}")
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON may hold lone surrogates ("\ud800")
            raise SnapshotError(f"{where}: {key!r} is not valid Unicode") from None
    return value


def _count(obj: dict[str, Any], key: str, where: str, limit: int = 1 << 63) -> int:
    value: int = _get(obj, key, int, where)
    if not 0 <= value < limit:
        raise SnapshotError(f"{where}: {key!r} = {value} is out of range")
    return value


def _safe_file(directory: Path, name: str, where: str) -> Path:
    if not _SAFE_NAME.match(name) or name in (MANIFEST, MANIFEST + ".tmp"):
        raise SnapshotError(f"{where}: unsafe file name {name!r}")
    path = directory / name
    if not path.is_file() or path.is_symlink():
        raise SnapshotError(f"{where}: {name} is missing or not a regular file")
    return path


def load_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read and validate a snapshot's ``manifest.json``.

    Checks the format and version, ``complete``, every field's type and
    range, that block names and files are unique, that each file name is
    safe (no path), that each image exists with the block's exact length,
    and the device-state file's length, checksum and frame.

    Raises
    ------
    SnapshotError
        Anything missing or inconsistent; an interrupted save has no manifest.
    """
    root = Path(directory)
    path = root / MANIFEST
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SnapshotError(
            f"{root}: no {MANIFEST} (not a snapshot, or an unfinished save)"
        ) from None
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{path}: not UTF-8 ({exc})") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, too many digits, too deep
        raise SnapshotError(f"{path}: not JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise SnapshotError(f"{path}: not a JSON object")
    where = str(path)
    if obj.get("format") != FORMAT:
        raise SnapshotError(f"{where}: format is {obj.get('format')!r}, not {FORMAT!r}")
    if _get(obj, "version", int, where) != FORMAT_VERSION:
        raise SnapshotError(f"{where}: unsupported version {obj['version']}")
    if obj.get("complete") is not True:
        raise SnapshotError(f"{where}: the snapshot is not complete")
    page_size = _count(obj, "page_size", where)
    if page_size != PAGE_SIZE:
        raise SnapshotError(f"{where}: page size {page_size}, only {PAGE_SIZE} is supported")
    machine = _get(obj, "machine_type", str, where)
    try:
        configuration = bytes.fromhex(_get(obj, "configuration", str, where))
    except ValueError:
        raise SnapshotError(f"{where}: 'configuration' is not hex") from None
    if configuration[:1] != b"\x07" or machine.encode() not in configuration:
        raise SnapshotError(f"{where}: 'configuration' does not match the machine type")
    ram = _get(obj, "ram_section", dict, where)
    raw_blocks = _get(obj, "blocks", list, where)
    if not raw_blocks:
        raise SnapshotError(f"{where}: no RAM blocks")
    blocks: list[BlockInfo] = []
    names: set[str] = set()
    files: set[str] = set()
    for i, entry in enumerate(raw_blocks):
        bwhere = f"{where}: blocks[{i}]"
        if not isinstance(entry, dict):
            raise SnapshotError(f"{bwhere}: not an object")
        idstr = _get(entry, "idstr", str, bwhere)
        if not 1 <= len(idstr.encode()) <= 255 or "\0" in idstr or idstr in names:
            raise SnapshotError(f"{bwhere}: bad or repeated block name {idstr!r}")
        length = _count(entry, "length", bwhere)
        if length == 0 or length % page_size:
            raise SnapshotError(f"{bwhere}: length {length} is not a multiple of the page size")
        name = _get(entry, "file", str, bwhere)
        if name in files:
            raise SnapshotError(f"{bwhere}: file {name} used twice")
        image = _safe_file(root, name, bwhere)
        if image.stat().st_size != length:
            raise SnapshotError(
                f"{bwhere}: {name} holds {image.stat().st_size} bytes, the block {length}"
            )
        names.add(idstr)
        files.add(name)
        blocks.append(
            BlockInfo(
                idstr,
                length,
                name,
                _count(entry, "data_pages", bwhere, length // page_size + 1),
                _count(entry, "normal", bwhere),
                _count(entry, "duplicate", bwhere),
            )
        )
    dev = _get(obj, "device_state", dict, where)
    dev_name = _get(dev, "file", str, where + ": device_state")
    dev_path = _safe_file(root, dev_name, where + ": device_state")
    dev_bytes = dev_path.read_bytes()
    if len(dev_bytes) != _count(dev, "length", where + ": device_state"):
        raise SnapshotError(f"{where}: {dev_name} does not have the recorded length")
    digest = _get(dev, "sha256", str, where + ": device_state")
    if hashlib.sha256(dev_bytes).hexdigest() != digest:
        raise SnapshotError(f"{where}: {dev_name} does not match its checksum")
    try:
        check_device_state(dev_bytes)
    except StreamError as exc:
        raise SnapshotError(f"{where}: {dev_name}: {exc}") from None
    commands = _get(obj, "commands", list, where)
    if any(c != "SWITCHOVER_START" for c in commands):
        raise SnapshotError(f"{where}: unknown commands {commands}")
    try:
        uuid = bytes.fromhex(_get(obj, "uuid", str, where))
    except ValueError:
        uuid = b""
    if len(uuid) != 16:
        raise SnapshotError(f"{where}: 'uuid' must be 16 bytes of hex")
    return Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        machine_type=machine,
        configuration=configuration,
        page_size=page_size,
        blocks=tuple(blocks),
        ram_section_id=_count(ram, "section_id", where, U32 + 1),
        ram_instance_id=_count(ram, "instance_id", where, U32 + 1),
        ram_version_id=_count(ram, "version_id", where, U32 + 1),
        device_state_file=dev_name,
        device_state_length=len(dev_bytes),
        device_state_sha256=digest,
        commands=tuple(commands),
        normal=_count(obj, "normal", where),
        duplicate=_count(obj, "duplicate", where),
        channels=_count(obj, "channels", where, MAX_CHANNELS + 1),
        uuid=uuid,
        complete=True,
    )
