"""Quiet imports of MACE, e3nn and TorchScript: library notices that say nothing to a user.

Importing `tangentlab` imports this module first. It imports MACE (before e3nn, as MACE
requires) and hides what the libraries print for their own developers:

- e3nn's ``UserWarning`` that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (which ``import mace`` sets)
  forces ``weights_only=False`` when it loads its own constants (tangentlab passes
  ``weights_only`` explicitly wherever it loads a file: `tangentlab.model_files`);
- MACE's notice that the optional cuequivariance acceleration is not installed;
- TorchScript's ``UserWarning`` about instance-level annotations, raised each time e3nn
  compiles a module of a MACE model (dozens of times per campaign round).

Every other warning is left alone. With ``TANGENTLAB_DEBUG`` set (``tangentlab --debug``
sets it, and the processes a campaign starts inherit it) nothing is hidden and the notice
goes to stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

#: Set (to anything but ``""`` or ``"0"``) to see the libraries' warnings and notices.
DEBUG_ENV = "TANGENTLAB_DEBUG"

#: Message prefixes of the hidden ``UserWarning``s (regular expressions matched at the start).
HIDDEN_WARNINGS = (
    r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected",
    r"The TorchScript type system doesn't support instance-level annotations",
)


def debug() -> bool:
    """Whether the libraries' warnings and notices are shown (``TANGENTLAB_DEBUG``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def hide_library_warnings() -> None:
    """Ignore the `HIDDEN_WARNINGS` (added in front of the current filters)."""
    for message in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def show_library_warnings() -> None:
    """Remove the filters `hide_library_warnings` added (``tangentlab --debug``)."""
    hidden = set(HIDDEN_WARNINGS)
    warnings.filters[:] = [
        f for f in warnings.filters
        if not (f[0] == "ignore" and f[1] is not None and f[1].pattern in hidden)
    ]


def _import_mace() -> None:
    """Import MACE's tools (which print the cuequivariance notice on stdout, once)."""
    notice = sys.stderr if debug() else io.StringIO()
    with contextlib.redirect_stdout(notice):
        import mace.tools.cg  # noqa: F401  (mace before e3nn; cg prints the notice)


if not debug():
    hide_library_warnings()
_import_mace()
