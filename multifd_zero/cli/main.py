"""The command line: ``python -m multifd_zero`` or ``multifd-zero``, one module per command.

What every command shares is here, once: the parser reports a bad argument in
one line and exits 2; :func:`main` turns what a run can meet into one line on
stderr and an exit status (1 for a failed run, 130 for Ctrl-C) and leaves a
closed standard output quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import _kernels
from .._version import __version__
from ..errors import MigrationError, PacketError, SnapshotError
from . import _ctrl_c, bench, demo, info, migrate, restore, save, scan, sparsify
from ._argtypes import HelpFormatter

_COMMANDS = (save, restore, demo, migrate, scan, sparsify, bench, info)

PROG = "multifd-zero"

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and whose help shows the defaults."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print ``PROG COMMAND: error: MESSAGE (see --help)`` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (also used to document the command line)."""
    parser = Parser(prog=PROG, description="QEMU's multifd zero-page detection, from Python.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--simd",
        choices=("best", *_kernels.simd_paths()),
        help="zero-check path to use (default: the fastest this CPU has)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for command in _COMMANDS:
        command.register(sub)
    return parser


def _leave_stdout() -> None:
    """The reader of stdout left: point it at /dev/null so that exit's flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def error_message(exc: BaseException) -> str:
    """One line for ``exc``: an OSError names its file once, others give their message."""
    if isinstance(exc, MemoryError):
        return f"not enough memory{': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        return f"{name}: {exc.strerror}" if name is not None else exc.strerror
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _interrupted_line(prog: str) -> str:
    # On a terminal, first erase what a progress bar may have left on the line.
    start = "\r\033[K" if sys.stderr.isatty() else ""
    return f"{start}{prog}: interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    0 on success, 1 when the run failed (one line on stderr says why), 2 for
    a usage error (from the parser), 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command}"
    _ctrl_c.name_line(_interrupted_line(prog))
    try:
        if args.simd:
            _kernels.set_simd(args.simd)
        status: int = args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is handled below
        return status
    except KeyboardInterrupt:
        _ctrl_c.announce()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (``... | head``): stop quietly, as other tools do.
        _leave_stdout()
        return EXIT_FAILED
    except (OSError, ValueError, MemoryError, MigrationError, PacketError, SnapshotError) as exc:
        print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_FAILED


def console() -> NoReturn:
    """The ``multifd-zero`` program: :func:`main`; after a Ctrl-C, an exit that waits for nothing.

    A Ctrl-C can land while the threads of a migration or of a benchmark wait
    on each other, and at exit the interpreter would wait for them forever.
    Once the one line is printed nothing is left to save, so the process ends
    at once; a destination child notices that its parent is gone and removes
    its files (``migration/process.py``).
    """
    _ctrl_c.watch(EXIT_INTERRUPTED)
    status = main()
    if status == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    sys.exit(status)
