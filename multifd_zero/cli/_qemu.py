"""What the save and restore commands share: QMP (QEMU's own client), a progress bar, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._argtypes import channel_count, seconds
from ._progress import tqdm_class

__all__ = [
    "Bar",
    "Qmp",
    "add_peer_options",
    "error_line",
    "format_bytes",
    "print_json",
]

MAX_BANDWIDTH = 1 << 40
"""``max-bandwidth`` set on a source: QEMU's default (128 MiB/s) would make the run crawl."""


def add_peer_options(parser: argparse.ArgumentParser, peer: str, qmp_does: str) -> None:
    """The options ``save`` and ``restore`` share: the QEMU ``peer``'s channels, QMP, output."""
    parser.add_argument(
        "--channels",
        type=channel_count,
        default=2,
        metavar="N",
        help=f"the {peer}'s multifd-channels; 0 when multifd is off",
    )
    parser.add_argument("--qmp", metavar="PATH", help=f"QMP socket of the {peer} QEMU: {qmp_does}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="S",
        help="seconds any single wait may take",
    )


def format_bytes(count: float) -> str:
    """Return ``count`` bytes in binary units, e.g. ``64.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def error_line(command: str, exc: BaseException) -> None:
    """Print one line for ``exc`` on stderr."""
    text = str(exc) or type(exc).__name__
    print(f"multifd-zero {command}: error: {text}".splitlines()[0], file=sys.stderr)


def print_json(data: dict[str, Any]) -> None:
    """Print ``data`` as JSON on stdout (bytes as hex)."""

    def default(obj: object) -> object:
        if isinstance(obj, bytes):
            return obj.hex()
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")

    print(json.dumps(data, indent=1, default=default))


class Bar:
    """A tqdm progress bar on a terminal; nothing otherwise.

    Parameters
    ----------
    enabled : bool
        False for ``--json`` runs.
    desc : str
    stream : text file, default stderr
    """

    def __init__(self, enabled: bool, desc: str, stream: TextIO | None = None) -> None:
        out = stream or sys.stderr
        self._bar: Any = None
        if enabled and out.isatty():
            tqdm = tqdm_class()
            self._bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc, file=out, leave=False)
        self._last = 0.0

    @property
    def callback(self) -> Callable[[int, int], None] | None:
        """The ``progress`` callback, or None without a bar."""
        return self._update if self._bar is not None else None

    def _update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        bar = self._bar
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Qmp:
    """The few QMP commands the CLI needs, over ``qemu.qmp``'s synchronous client.

    Parameters
    ----------
    path : str
        QEMU's QMP Unix socket.
    timeout : float
        Seconds to wait for a migration to finish.
    """

    def __init__(self, path: str, timeout: float) -> None:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self._qmp = QEMUMonitorProtocol(path)
        self._qmp.connect()
        self.timeout = timeout

    def cmd(self, name: str, **args: Any) -> Any:
        """Run one command; raise on an error reply."""
        return self._qmp.cmd(name, **args)

    def setup(self, channels: int, *, source: bool, zero_page_detection: str | None) -> None:
        """Set the multifd capability, ``multifd-channels`` and (source) ``max-bandwidth``."""
        self.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": "multifd", "state": channels > 0}],
        )
        params: dict[str, Any] = {}
        if channels:
            params["multifd-channels"] = channels
        if source:
            params["max-bandwidth"] = MAX_BANDWIDTH
        if zero_page_detection is not None:
            params["zero-page-detection"] = zero_page_detection
        if params:
            self.cmd("migrate-set-parameters", **params)

    def wait_migration(self) -> dict[str, Any]:
        """Poll ``query-migrate`` until it is completed, failed or cancelled."""
        deadline = time.monotonic() + self.timeout
        while True:
            info: dict[str, Any] = self.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"QEMU's migration is still {info.get('status')} after {self.timeout} s"
                )
            time.sleep(0.02)

    def close(self) -> None:
        """Disconnect (QEMU keeps running)."""
        with contextlib.suppress(Exception):  # best effort: QEMU may be gone
            self._qmp.close()
