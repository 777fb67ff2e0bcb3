"""``python -m multifd_zero``: see :mod:`multifd_zero.cli`."""

from .cli.main import console

console()
