"""The package version, read from the installed distribution's metadata."""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("multifd-zero")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = ["__version__"]
