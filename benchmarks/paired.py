"""Seed-paired differences at the label budget against any reference method, across result files.

The replay benchmark's tables pair every method with random. To compare two other methods
(e.g. a new arm against the product's default), or arms stored in different result files of
the same data and seeds, this joins the files' campaigns by (method, seed) and prints each
method's error minus the reference's, seed by seed, with a 95 % Student-t interval
(:func:`benchmarks.analysis.paired_difference`):

```
python -m benchmarks.paired docs/benchmarks/surface-shift-arms-seeds-1-4.json \
    docs/benchmarks/surface-shift-readouts-seeds-1-4.json --reference activation:transductive:test
```

A (method, seed) present in two files must have the same learning curve in both (a rerun of
the same seed reproduces it); otherwise the files are refused with an ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.analysis import paired_difference


def campaigns(paths: list[Path]) -> dict[str, dict[int, dict]]:
    """Learning curves by method and seed, from every file; ValueError when two files disagree."""
    found: dict[str, dict[int, dict]] = {}
    for path in paths:
        for campaign in json.loads(path.read_text())["campaigns"].values():
            method, seed, curve = campaign["method"], campaign["seed"], campaign["curve"]
            known = found.setdefault(method, {}).get(seed)
            if known is not None and any(known[k] != curve[k] for k in ("force", "energy")):
                raise ValueError(f"{method} seed {seed} has different curves in the files given")
            found[method][seed] = {**curve, "seed": seed}
    return found


def differences(found: dict[str, dict[int, dict]], reference: str) -> dict[str, Any]:
    """Per method (not the reference): force and energy minus the reference's at the budget."""
    if reference not in found:
        raise ValueError(f"reference method {reference!r} is in none of the files")
    base = list(found[reference].values())
    return {
        method: {key: paired_difference(list(curves.values()), base, key)["final"]
                 for key in ("force", "energy")}
        for method, curves in found.items()
        if method != reference
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="replay benchmark result JSON files")
    parser.add_argument("--reference", required=True, help="the method subtracted, e.g. random")
    args = parser.parse_args(argv)
    try:
        table = differences(campaigns(args.results), args.reference)
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"seed-paired difference at the budget, minus {args.reference} (95 % t):")
    for method, found in table.items():
        cells = []
        for key, unit in (("force", "meV/Å"), ("energy", "meV/atom")):
            final = found[key]
            if final is None:
                cells.append(f"{key} n/a")
            elif final["half_width"] is None:
                cells.append(f"{key} {final['mean']:+.1f} {unit} (n = 1)")
            else:
                cells.append(f"{key} {final['mean']:+.1f} ± {final['half_width']:.1f} {unit} "
                             f"(n = {final['n']})")
        print(f"  {method}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
