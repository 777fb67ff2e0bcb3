"""``python -m multifd_zero``: see :mod:`multifd_zero.cli`."""

import sys

from .cli.main import main

sys.exit(main())
