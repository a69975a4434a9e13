"""Machine-independent paths in stored benchmark results.

A result JSON names the files a benchmark read and wrote. Stored as absolute paths they
would name one machine's folders, so every path is written relative to a root the reader
knows (docs/benchmarks/README.md, "Paths in stored results"):

- ``${TANGENTLAB_DATA}/...``: under the reference-data root (the same notation as the
  presets, so a stored ``spec`` can be loaded again with ``benchmarks.spec.load_spec_data``);
- ``<work_dir>/...``: under the benchmark's working folder (prepared data, campaign runs,
  the SQLite database);
- ``<out>/...``: under the folder the outputs were written to;
- a path relative to the repository root (e.g. ``tangentlab/data/tangentlab-hcno-xtb.model``)
  for files of this repository.

Paths outside these roots are kept as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.spec import DATA_VARIABLE

REPOSITORY = Path(__file__).resolve().parents[1]
DATA_PLACEHOLDER = f"${{{DATA_VARIABLE}}}"


def _pattern(root: str) -> re.Pattern[str]:
    # the root as a whole path component: not preceded by a name character, followed by a
    # separator, a quote, whitespace or the end of the string
    return re.compile(r"(?<![\w.\-])" + re.escape(root) + r"(?=[/\s\"'=,;:]|$)")


def path_roots(
    data_root: str | Path | None = None,
    work_dir: str | Path | None = None,
    out: str | Path | None = None,
    repository: str | Path | None = REPOSITORY,
) -> list[tuple[str, str]]:
    """Absolute roots and the placeholders that replace them, longest root first.

    Parameters
    ----------
    data_root
        Folder of the reference data (``TANGENTLAB_DATA``); None: not replaced.
    work_dir
        The benchmark's working folder; None: not replaced.
    out
        Folder the outputs are written to; None: not replaced.
    repository
        Repository root: paths below it become relative paths; None: not replaced.

    Returns
    -------
    list of (str, str)
        ``(absolute root, placeholder)`` pairs; the repository's placeholder is ``""``.
    """
    pairs = []
    for root, placeholder in (
        (data_root, DATA_PLACEHOLDER),
        (work_dir, "<work_dir>"),
        (out, "<out>"),
        (repository, ""),
    ):
        if root is None or str(root) == "":
            continue
        absolute = str(Path(root).expanduser().resolve())
        if absolute != "/":
            pairs.append((absolute, placeholder))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def portable_text(text: str, roots: list[tuple[str, str]]) -> str:
    """``text`` with every occurrence of an absolute root replaced by its placeholder.

    Works on plain paths and on paths inside longer strings (a command line, an SQLite URL).
    Below the repository root the path becomes relative (``/repo/tangentlab/x`` ->
    ``tangentlab/x``; the root itself becomes ``.``).
    """
    for root, placeholder in roots:
        pattern = _pattern(root)
        if placeholder:
            text = pattern.sub(placeholder.replace("\\", "\\\\"), text)
        else:
            text = re.sub(pattern.pattern + "/", "", text)
            text = pattern.sub(".", text)
    return text


def portable_paths(value: Any, roots: list[tuple[str, str]]) -> Any:
    """A copy of a JSON-like value with :func:`portable_text` applied to every string.

    Dictionary keys are rewritten too (some results are keyed by file).
    """
    if isinstance(value, str):
        return portable_text(value, roots)
    if isinstance(value, dict):
        return {
            portable_text(k, roots) if isinstance(k, str) else k: portable_paths(v, roots)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [portable_paths(v, roots) for v in value]
    return value
