"""``python -m cli``: the ``tangentlab`` command without the installed entry point."""

from __future__ import annotations

import sys

from cli import main

sys.exit(main())
