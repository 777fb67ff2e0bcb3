"""The command-line layer: one module per command, each with ``register`` and ``run``."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
