"""Quiet imports of MACE, e3nn and TorchScript: library notices that say nothing to a user.

Importing `tangentlab` imports this module first. It imports MACE's top-level package (before
e3nn, as MACE requires; it only sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and hides what the
libraries print for their own developers, without importing torch: a command that needs no
model (``--help``, ``status``, a refused start) starts in a fraction of the time.

- e3nn's ``UserWarning`` that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (which ``import mace`` sets)
  forces ``weights_only=False`` when it loads its own constants (tangentlab passes
  ``weights_only`` explicitly wherever it loads a file: `tangentlab.model_files`);
- MACE's notice that the optional cuequivariance acceleration is not installed;
- TorchScript's ``UserWarning`` about instance-level annotations, raised each time e3nn
  compiles a module of a MACE model (dozens of times per campaign round);
- Alembic's INFO lines for each schema migration step, which a campaign start would print
  (quacc, once imported, sends INFO records of every logger to stderr).

Every other warning is left alone. With ``TANGENTLAB_DEBUG`` set (``tangentlab --debug``
sets it, and the processes a campaign starts inherit it) nothing is hidden and the notice
goes to stderr.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import sys
import warnings

import mace  # noqa: F401  (mace before e3nn: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; no torch yet)

#: Set (to anything but ``""`` or ``"0"``) to see the libraries' warnings and notices.
DEBUG_ENV = "TANGENTLAB_DEBUG"

#: Message prefixes of the hidden ``UserWarning``s (regular expressions matched at the start).
HIDDEN_WARNINGS = (
    r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected",
    r"The TorchScript type system doesn't support instance-level annotations",
)

#: Loggers whose records below WARNING are dropped.
HIDDEN_LOGGERS = ("alembic",)


def debug() -> bool:
    """Whether the libraries' warnings and notices are shown (``TANGENTLAB_DEBUG``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def hide_library_warnings() -> None:
    """Ignore the `HIDDEN_WARNINGS` (added in front of the current filters)."""
    for message in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    for name in HIDDEN_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def show_library_warnings() -> None:
    """Remove the filters `hide_library_warnings` added (``tangentlab --debug``)."""
    hidden = set(HIDDEN_WARNINGS)
    warnings.filters[:] = [
        f for f in warnings.filters
        if not (f[0] == "ignore" and f[1] is not None and f[1].pattern in hidden)
    ]
    for name in HIDDEN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


#: The module that prints MACE's cuequivariance notice on stdout when it is first imported.
NOTICE_MODULE = "mace.tools.cg"


class _QuietLoader(importlib.abc.Loader):
    """Runs a module's code with stdout sent to stderr (``--debug``) or nowhere."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with contextlib.redirect_stdout(sys.stderr if debug() else io.StringIO()):
            self.loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `NOTICE_MODULE` as usual and hands it to a `_QuietLoader`, whenever (and if ever)
    it is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != NOTICE_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if not debug():
    hide_library_warnings()
if NOTICE_MODULE not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietFinder())
