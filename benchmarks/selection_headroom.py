"""Selection headroom: test errors of one fresh fine-tune per fixed label set, by how the set was chosen.

A campaign mixes two things: which structures get labelled and how much the model is trained
on them (a warm-started campaign trains every round again). This script takes the second out:
for each seed it draws the preset's initial set (the same for every strategy), adds
``labels - initial`` structures chosen by each strategy *in one shot* from the starting model,
fine-tunes the starting model once on each set with the same hyperparameters, and prints the
test errors (overall, and force MAE per test file) as JSON. If no strategy, not even one that
knows the test distribution, beats random by much, acquisition has little to gain on that data
at that training budget.

Strategies:

- ``random``: uniform over the rest of the pool;
- ``file:<text>``: uniform over pool structures whose source file name contains ``<text>``
  (e.g. ``file:600K``: an informed choice no acquisition is told about);
- ``<signal>:<rule>[:<target>]``: `tangentlab.acquisition.select_batch` with the starting
  model, the initial set as the labelled set, and target ``pool`` (default) or ``test`` (the
  test structures' positions);
- ``oracle:top`` / ``oracle:weighted``: an upper bound no acquisition can reach, because it
  reads the pool's labels. The starting model is fine-tuned on the initial set (same
  hyperparameters); ``top`` takes the structures where that model's force MAE against the
  stored labels is largest (perfect uncertainty sampling), ``weighted`` draws them with
  probability proportional to that error (keeps some of random's spread).

    python -m benchmarks.selection_headroom acac-pool1000 --labels 50 --seeds 0 1 \
        --strategies random file:600K activation:transductive:test --max-epochs 60 --threads 1
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.finetune_spread import (
    by_source_file,
    fixed_setup,
    preset_parser,
    run_in_work_dir,
    test_errors,
)
from tangentlab.finetune import FineTuneHyperparameters, finetune


ORACLES = ("oracle:top", "oracle:weighted")


def oracle_pick(strategy: str, rest: np.ndarray, count: int, errors: np.ndarray, rng) -> np.ndarray:
    """``count`` positions of ``rest`` by a label-reading oracle: the largest ``errors`` (one per
    pool structure, indexed like the pool) or a draw weighted by them."""
    weights = np.asarray(errors, dtype=float)[rest]
    if strategy == "oracle:top":
        return rest[np.argsort(-weights, kind="stable")[:count]]
    return rng.choice(rest, size=count, replace=False, p=weights / weights.sum())


def check_strategy(strategy: str) -> None:
    """Refuse an unknown strategy before any fine-tune runs."""
    from tangentlab.acquisition.rules import RULES
    from tangentlab.acquisition.signals import SIGNALS

    if strategy == "random" or strategy in ORACLES or (strategy.startswith("file:") and len(strategy) > 5):
        return
    parts = strategy.split(":")
    if (len(parts) not in (2, 3) or parts[0] not in SIGNALS or parts[1] not in RULES
            or (len(parts) == 3 and parts[2] not in ("pool", "test"))):
        raise ValueError(f"unknown strategy {strategy!r}: random, file:<text>, {', '.join(ORACLES)} or "
                         f"<signal>:<rule>[:pool|test] "
                         f"(signals {', '.join(SIGNALS)}; rules {', '.join(RULES)})")


def choose(strategy: str, rest: np.ndarray, count: int, *, pool, test, initial, sources, model, seed: int,
           errors=None):
    """``count`` positions of ``rest`` (pool indices not in the initial set) by ``strategy``;
    ``errors()`` gives the oracles' per-structure force errors."""
    rng = np.random.default_rng([seed, 12])
    if strategy == "random":
        return rng.choice(rest, size=count, replace=False)
    if strategy in ORACLES:
        return oracle_pick(strategy, rest, count, errors(), rng)
    if strategy.startswith("file:"):
        allowed = rest[[strategy[5:] in sources[i] for i in rest]]
        if len(allowed) < count:
            raise ValueError(f"strategy {strategy!r}: {len(allowed)} pool structures match, {count} needed")
        return rng.choice(allowed, size=count, replace=False)
    check_strategy(strategy)
    parts = strategy.split(":")
    from tangentlab.acquisition import fit_scorer, select_batch
    from tangentlab.acquisition.policy import reference_structures

    candidates = [pool[i] for i in rest]
    scorer = fit_scorer(model, [pool[i] for i in initial], signal=parts[0],
                        reference_atoms=reference_structures(candidates))
    target = test if len(parts) == 3 and parts[2] == "test" else None
    picked, _, _ = select_batch(scorer, candidates, rule=parts[1], target=target, batch_size=count, seed=seed)
    return rest[np.asarray(picked)]


def _force_mae_by_file(test, predictions) -> dict[str, float]:
    errors = [np.abs(forces - atoms.arrays["forces"]).ravel()
              for atoms, (_, forces) in zip(test, predictions, strict=True)]
    return {name: 1000 * float(np.mean(np.concatenate(rows)))
            for name, rows in by_source_file(test, errors).items()}


def measure(name: str, data_root: str | None, strategies: list[str], seeds: list[int], labels: int,
            work: Path, max_epochs: int | None = None) -> dict:
    """Test errors of one fine-tune per seed and strategy (see the module docstring)."""
    from tangentlab.mace_model import load_model

    for strategy in strategies:
        check_strategy(strategy)

    def check_labels(spec) -> None:  # before any data is prepared
        if labels <= spec.initial_size:
            raise ValueError(f"--labels {labels} must exceed the preset's initial set ({spec.initial_size})")

    setup = fixed_setup(name, data_root, work, max_epochs, check=check_labels)
    spec, pool, test, start, hyper = setup.spec, setup.pool, setup.test, setup.start, setup.hyper
    sources = [atoms.info.get("source_file", "") for atoms in pool]
    model = load_model(str(start))

    def fit(indices, seed: int, path: Path):
        """One fine-tune of the starting model on the pool structures ``indices``."""
        picks = np.random.default_rng([seed, 13]).permutation(indices)
        n_valid = round(spec.valid_fraction * len(picks))
        train, valid = [pool[i] for i in picks[n_valid:]], [pool[i] for i in picks[:n_valid]]
        return finetune(start, train, valid, path, hyper=FineTuneHyperparameters(**{**hyper, "seed": seed}))

    cached: dict[int, np.ndarray] = {}

    def oracle_errors(seed: int, initial) -> np.ndarray:
        """Force MAE (meV/Å) per pool structure of the starting model fine-tuned on the initial set."""
        if seed not in cached:
            _, predictions = test_errors(str(fit(initial, seed, work / f"s{seed}-initial.model").path), pool)
            cached[seed] = np.array([1000 * np.mean(np.abs(forces - atoms.arrays["forces"]))
                                     for atoms, (_, forces) in zip(pool, predictions, strict=True)])
        return cached[seed]

    results: dict = {"preset": name, "labels": labels, "initial": spec.initial_size, "pool": len(pool),
                     "test": len(test), "finetune": hyper, "model": spec.model, "runs": []}
    for seed in seeds:
        initial = np.random.default_rng([seed, 11]).choice(len(pool), size=spec.initial_size, replace=False)
        rest = np.setdiff1d(np.arange(len(pool)), initial)
        for strategy in strategies:
            extra = choose(strategy, rest, labels - spec.initial_size, pool=pool, test=test, initial=initial,
                           sources=sources, model=model, seed=seed, errors=lambda: oracle_errors(seed, initial))
            tick = time.perf_counter()
            result = fit(np.concatenate([initial, extra]), seed, work / f"s{seed}-{len(results['runs'])}.model")
            errors, predictions = test_errors(str(result.path), test)
            row = {"seed": seed, "strategy": strategy, "seconds": round(time.perf_counter() - tick, 1),
                   "best_epoch": result.best_epoch, **errors,
                   "force_mae_mev_per_a_by_file": _force_mae_by_file(test, predictions),
                   "picked_from": dict(sorted(Counter(sources[i] for i in extra).items()))}
            results["runs"].append(row)
            print(row, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = preset_parser(__doc__)
    parser.add_argument("--strategies", nargs="+", default=["random", "activation:transductive:test"])
    parser.add_argument("--labels", type=int, required=True, help="labels per set, initial set included")
    args = parser.parse_args(argv)
    return run_in_work_dir(args.threads, args.out, lambda work: measure(
        args.preset, args.data_root, args.strategies, args.seeds, args.labels, work, args.max_epochs))


if __name__ == "__main__":
    main()
