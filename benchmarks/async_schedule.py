"""Synchronous vs asynchronous rounds: a discrete-event replay with real learning.

Only the clock is simulated. Every selection, fine-tune and test evaluation is the product's
own (:func:`tangentlab.acquisition.policy.fit_policy_scorer`, :func:`select_batch`,
:func:`tangentlab.finetune.finetune`) on a replay preset's data, so the error curves and the
labels-to-target are real; the QM jobs take a drawn time instead of running, and a fine-tune
takes the CPU time it took here (one torch thread).

- **sync** (today's rounds): the round's batch is labelled by ``W`` workers (each job goes to
  the first free worker), then the model is fine-tuned and evaluated while every worker waits.
- **async** (``schedule: async``): ``k`` jobs per worker are kept in flight; each new pick
  comes from the newest model, its posterior conditioned on every pending pick (the features
  need no labels); the trainer fine-tunes as soon as ``m`` new labels are there while the
  workers go on, with ``--train-on batches`` (``streaming.train_on``, the default) on the
  initial set first (once all of it arrived) and then on the previous model's labels and the
  oldest ``m`` new arrivals, with ``--train-on arrived`` on every label that has arrived (the
  first model once as many labels as the initial set arrived); after a new model the queued,
  not yet started picks are re-ranked; with ``--max-ahead A`` (``streaming.max_ahead``) no
  pick is made while ``A`` picks (queued, running or labelled, the initial set included) are
  beyond the newest model's training set, so workers wait for the next model instead.

Label times are drawn once per (seed, structure), the same in both modes, from a two-piece
log-normal fitted to the quick start's PySCF labels (:data:`LATENCY`).

    python -m benchmarks.async_schedule h2combustion --seeds 0 1 2 --workers 1 4 16 \
        --out docs/benchmarks/async-schedule.json

``--schedules async`` runs the asynchronous schedule alone (the synchronous runs do not depend
on the asynchronous options, so an earlier result's can be reused).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.finetune_spread import fixed_setup, preset_parser, run_in_work_dir, test_errors
from benchmarks.spec import preset
from tangentlab.acquisition import random_selection, select_batch
from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
from tangentlab.config import Acquisition
from tangentlab.finetune import FineTuneHyperparameters, finetune
from tangentlab.mace_model import load_model
from tangentlab.oracles.replay import latency_seconds
from tangentlab.splits import draw, is_validation, split_labelled
from tangentlab.structures import content_hash

#: QM label time (s): median 6 s, 1st and 60th of the quick start's 60 PySCF jobs at 0.7 and
#: 230 s (z = 2.13 for the 1/60 quantiles gives a log-normal sigma of 1.0 below the median and
#: 1.7 above), clipped to the observed range: the replay oracle's `latency` settings. The
#: per-job times were not stored; this is the fit to the three numbers that were.
LATENCY = {"median_s": 6.0, "sigma_below": 1.0, "sigma_above": 1.7, "min_s": 0.7, "max_s": 230.0}


def label_times(seed: int, n: int, latency: dict = LATENCY) -> np.ndarray:
    """Drawn QM time of each of ``n`` pool structures (the same for every schedule of a seed)."""
    return latency_seconds(np.random.default_rng([seed, 29]).standard_normal(n), latency)


def list_schedule(durations: list[float], workers: int, start: float = 0.0) -> tuple[float, float]:
    """Jobs in order, each to the first free worker: (end of the last job, busy worker-seconds)."""
    free = [start] * workers
    end = start
    for d in durations:
        t = heapq.heappop(free) + d
        end = max(end, t)
        heapq.heappush(free, t)
    return end, float(sum(durations))


@dataclass
class Model:
    """A model version of the replay: its file, its training labels and its test errors."""

    path: str
    labels: tuple[int, ...]
    errors: dict
    cpu_s: float  # fine-tune + evaluation


@dataclass
class Learner:
    """The real half of the replay: selection, fine-tuning and evaluation on a preset's data."""

    pool: list
    test: list
    start: Path
    hyper: dict
    settings: Acquisition
    valid_fraction: float
    seed: int
    work: Path
    _loaded: dict = field(default_factory=dict)
    _valid: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)

    def model(self, path: str):
        if path not in self._loaded:
            self._loaded.clear()
            self._loaded[path] = load_model(path)
        return self._loaded[path]

    def is_valid(self, index: int) -> bool:
        if index not in self._valid:
            self._valid[index] = is_validation(content_hash(self.pool[index]), self.valid_fraction)
        return self._valid[index]

    def initial(self, size: int) -> list[int]:
        """The campaign's initial draw (:func:`tasks.setup.set_up`) and its splits."""
        picks = draw(list(range(len(self.pool))), size, self.seed, salt=2)
        splits = split_labelled([content_hash(self.pool[i]) for i in picks], self.valid_fraction)
        self._valid.update({i: s == "valid" for i, s in zip(picks, splits, strict=True)})
        return picks

    def _scorer(self, path: str, conditioned: list[int], taken: set[int]):
        reference = reference_structures([a for i, a in enumerate(self.pool) if i not in taken])
        train = [self.pool[i] for i in conditioned if not self.is_valid(i)]
        return fit_policy_scorer(self.model(path), train, reference, self.settings)

    def select(self, path: str, conditioned: list[int], taken: set[int], count: int, tag: int):
        """``count`` new picks by model ``path``, its σ conditioned on ``conditioned`` (labelled
        and pending); returns the pool indices and the CPU seconds it took."""
        tick = time.process_time()
        rest = [i for i in range(len(self.pool)) if i not in taken]
        count = min(count, len(rest))
        if self.settings.signal == "random":
            order = random_selection(len(rest), count, self.seed * 1000 + tag)
        else:
            order = self._rank(path, conditioned, taken, [self.pool[i] for i in rest], count, tag)
        return [rest[int(j)] for j in order], time.process_time() - tick

    def _rank(self, path, conditioned, taken, candidates, count, tag):
        settings = self.settings
        target = (
            self.test if settings.rule == "transductive" and settings.target == "test" else None
        )
        picked, _, _ = select_batch(
            self._scorer(path, conditioned, taken),
            candidates,
            batch_size=count,
            rule=settings.rule,
            target=target,
            sigma_quantile=settings.sigma_quantile,
            seed=self.seed * 1000 + tag,
        )
        return picked

    def rerank(
        self, path: str, conditioned: list[int], taken: set[int], queued: list[int], tag: int
    ):
        """The queued picks in the order the new model ``path`` would pick them."""
        if len(queued) < 2 or self.settings.signal == "random":
            return list(queued), 0.0
        tick = time.process_time()
        order = self._rank(
            path, conditioned, taken, [self.pool[i] for i in queued], len(queued), tag
        )
        return [queued[int(j)] for j in order], time.process_time() - tick

    def train(self, parent: str, labelled: list[int], number: int) -> Model:
        """Fine-tune ``parent`` on ``labelled`` (warm start, like a campaign) and evaluate it;
        a fine-tune of the same parent on the same labels is done once per seed (the first
        model, on the initial set, is the same in every schedule)."""
        key = (parent, tuple(sorted(labelled)))
        if key not in self.trained:
            self.trained[key] = self._train(parent, labelled, number)
        return self.trained[key]

    def _train(self, parent: str, labelled: list[int], number: int) -> Model:
        tick = time.process_time()
        train = [self.pool[i] for i in labelled if not self.is_valid(i)]
        valid = [self.pool[i] for i in labelled if self.is_valid(i)]
        if not train:
            train, valid = valid[:1], valid[1:]
        result = finetune(
            parent,
            train,
            valid,
            self.work / f"s{self.seed}-{len(self.trained):03d}.model",
            hyper=FineTuneHyperparameters(**self.hyper, seed=self.seed),
        )
        errors, _ = test_errors(str(result.path), self.test)
        return Model(str(result.path), tuple(sorted(labelled)), errors, time.process_time() - tick)

    def evaluate_start(self) -> Model:
        tick = time.process_time()
        errors, _ = test_errors(str(self.start), self.test)
        return Model(str(self.start), (), errors, time.process_time() - tick)


def met(errors: dict, targets: dict) -> bool:
    return (
        errors["energy_mae_mev_per_atom"] <= targets["energy_mae_mev_per_atom"]
        and errors["force_mae_mev_per_a"] <= targets["force_mae_mev_per_a"]
    )


@dataclass
class Plan:
    """The campaign shape both schedules share (from the preset) and the async settings."""

    initial: int
    batch: int
    rounds: int
    jobs_per_worker: int = 1  # k
    train_every: int | None = None  # m; None: the batch size
    train_on: str = "batches"  # async trainer: "batches" (oldest m new arrivals) or "arrived"
    max_ahead: int | None = None  # A: picks beyond the newest model's training set; None: no cap

    @property
    def budget(self) -> int:
        return self.initial + self.rounds * self.batch


def sync_run(learner: Learner, plan: Plan) -> list[dict]:
    """Today's rounds, computed once per seed (the picks do not depend on the workers)."""
    batch, labelled, parent, rounds = learner.initial(plan.initial), [], str(learner.start), []
    for number in range(plan.rounds + 1):
        labelled = labelled + batch
        model = learner.train(parent, labelled, number)
        parent, select_s = model.path, 0.0
        rounds.append({"batch": batch, "model": model})
        if number < plan.rounds:
            batch, select_s = learner.select(
                parent, labelled, set(labelled), plan.batch, number + 1
            )
        rounds[-1]["select_cpu_s"] = select_s
    return rounds


def sync_clock(rounds: list[dict], times: np.ndarray, workers: int) -> dict:
    """The wall clock of ``rounds`` with ``workers`` QM workers: each batch, then the fine-tune
    and evaluation (every worker idle), then the next selection."""
    t, evaluations, jobs = 0.0, [], []
    for number, entry in enumerate(rounds):
        durations = [float(times[i]) for i in entry["batch"]]
        end, _ = list_schedule(durations, workers, t)
        jobs.extend(_jobs(durations, workers, t))
        t = end + entry["model"].cpu_s
        evaluations.append(_evaluation(t, entry["model"], len(jobs), number))
        t += entry["select_cpu_s"]
    return {"evaluations": evaluations, "jobs": jobs}


def _jobs(durations: list[float], workers: int, start: float) -> list[tuple[float, float]]:
    free, out = [start] * workers, []
    for d in durations:
        begin = heapq.heappop(free)
        out.append((begin, begin + d))
        heapq.heappush(free, begin + d)
    return out


def _evaluation(t: float, model: Model, started: int, version: int) -> dict:
    return {
        "t_s": t,
        "version": version,
        "trained_on": len(model.labels),
        "labels_started": started,
        **model.errors,
    }


@dataclass
class AsyncReplay:
    """The asynchronous schedule as events: label arrivals and fine-tunes that finish."""

    learner: Learner
    plan: Plan
    times: np.ndarray
    workers: int
    t: float = 0.0
    queue: list[int] = field(default_factory=list)
    running: list[tuple[float, int]] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    picked: list[int] = field(default_factory=list)
    jobs: list[tuple[float, float]] = field(default_factory=list)
    models: list[Model] = field(default_factory=list)
    training: tuple[float, Model] | None = None
    evaluations: list[dict] = field(default_factory=list)
    reranks: list[dict] = field(default_factory=list)
    selections: list[float] = field(default_factory=list)
    picked_by: dict[int, int] = field(default_factory=dict)

    def run(self) -> dict:
        self.models.append(self.learner.evaluate_start())
        self.queue = self.learner.initial(self.plan.initial)
        self.picked = list(self.queue)
        self.picked_by = {i: -1 for i in self.queue}  # -1: the random initial draw
        while True:
            self._fill()
            self._start_jobs()
            self._maybe_train()
            if not self._advance():
                break
        return {
            "evaluations": self.evaluations,
            "jobs": self.jobs,
            "reranks": self.reranks,
            "selections": len(self.selections),
            "select_cpu_s": float(sum(self.selections)),
            "picked_by_version": _count(self.picked_by.values()),
        }

    def _fill(self) -> None:
        """Keep ``k`` jobs per worker in flight: new picks by the newest model, conditioned on
        the labelled and every pending pick; with ``max_ahead``, at most that many picks beyond
        the newest model's training set (no failures here, so every pick counts)."""
        want = self.plan.jobs_per_worker * self.workers - len(self.running) - len(self.queue)
        count = min(want, self.plan.budget - len(self.picked))
        if self.plan.max_ahead is not None:  # streaming.max_ahead (tasks.stream.ahead_room)
            count = min(count, self.plan.max_ahead - (len(self.picked) - len(self.models[-1].labels)))
        if count <= 0:
            return
        version = len(self.models) - 1
        picks, cpu = self.learner.select(
            self.models[-1].path, list(self.picked), set(self.picked), count, tag=len(self.picked)
        )
        self.selections.append(cpu)
        self.queue.extend(picks)
        self.picked.extend(picks)
        self.picked_by.update({i: version for i in picks})

    def _start_jobs(self) -> None:
        while self.queue and len(self.running) < self.workers:
            index = self.queue.pop(0)
            end = self.t + float(self.times[index])
            heapq.heappush(self.running, (end, index))
            self.jobs.append((self.t, end))

    def _maybe_train(self) -> None:
        if self.training is not None:
            return
        trained = len(self.models[-1].labels)
        new = len(self.arrived) - trained
        every = self.plan.train_every or self.plan.batch
        everything = len(self.arrived) == self.plan.budget
        if self.plan.train_on == "batches":
            labelled = self._batch(trained, every, everything)
            if labelled is None:
                return
        elif new >= (self.plan.initial if trained == 0 else every) or (everything and new > 0):
            labelled = list(self.arrived)
        else:
            return
        model = self.learner.train(self.models[-1].path, labelled, len(self.models))
        self.training = (self.t + model.cpu_s, model)

    def _batch(self, trained: int, every: int, everything: bool) -> list[int] | None:
        """``streaming.train_on: batches``: the first model trains on the initial set once all
        of it arrived, each next one on the previous model's labels and the oldest ``every``
        new arrivals (all of them at the end), so model n trains on as many labels as
        synchronous round n; None: not yet."""
        if trained == 0:
            initial = self.picked[: self.plan.initial]  # the initial draw, queued first
            return initial if set(initial) <= set(self.arrived) else None
        seen = set(self.models[-1].labels)
        fresh = [i for i in self.arrived if i not in seen]
        if len(fresh) < every and not (everything and fresh):
            return None
        return [i for i in self.arrived if i in seen] + fresh[:every]

    def _advance(self) -> bool:
        """Move the clock to the next arrival or finished fine-tune; False when nothing is left."""
        label_at = self.running[0][0] if self.running else np.inf
        model_at = self.training[0] if self.training else np.inf
        if not np.isfinite(min(label_at, model_at)):
            return False
        if label_at <= model_at:
            self.t, index = heapq.heappop(self.running)
            self.arrived.append(index)
        else:
            self.t, model = self.training
            self.training = None
            self._new_model(model)
        return True

    def _new_model(self, model: Model) -> None:
        self.models.append(model)
        self.evaluations.append(_evaluation(self.t, model, len(self.jobs), len(self.models) - 1))
        pending = [i for i in self.picked if i not in set(self.queue)]
        order, cpu = self.learner.rerank(
            model.path, pending, set(self.picked), self.queue, tag=len(self.picked)
        )
        if len(self.queue) >= 2:
            self.reranks.append(
                {"t_s": self.t, "queued": len(self.queue), "changed": order != self.queue}
            )
        self.queue = order
        self.selections.append(cpu)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        key = "initial" if v < 0 else f"model {v}"
        out[key] = out.get(key, 0) + 1
    return out


def busy_until(jobs: list[tuple[float, float]], t: float) -> float:
    """Worker-seconds spent on QM jobs before ``t``."""
    return float(sum(max(0.0, min(end, t) - start) for start, end in jobs))


def outcome(run: dict, workers: int, targets: dict) -> dict:
    """Wall time, labels and worker utilisation at the targets and at the label budget's end."""
    evaluations = run["evaluations"]
    final = evaluations[-1]
    hit = next((e for e in evaluations if met(e, targets)), None)
    out = {
        "final_t_s": final["t_s"],
        "final_energy_mae": final["energy_mae_mev_per_atom"],
        "final_force_mae": final["force_mae_mev_per_a"],
        "utilisation_to_final": busy_until(run["jobs"], final["t_s"]) / (workers * final["t_s"]),
        "models": len(evaluations),
        "target_t_s": None,
        "target_trained_on": None,
        "target_labels_started": None,
        "utilisation_to_target": None,
    }
    if hit is not None:
        out.update(
            target_t_s=hit["t_s"],
            target_trained_on=hit["trained_on"],
            target_labels_started=hit["labels_started"],
            utilisation_to_target=busy_until(run["jobs"], hit["t_s"]) / (workers * hit["t_s"]),
        )
    return out


def _mean_sd(values: list) -> list | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return [
        float(np.mean(values)),
        float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        len(values),
    ]


def table(runs: list[dict]) -> list[dict]:
    """Mean, standard deviation and count over seeds per schedule and worker count."""
    keys = (
        "final_t_s",
        "target_t_s",
        "target_trained_on",
        "target_labels_started",
        "utilisation_to_target",
        "utilisation_to_final",
        "final_force_mae",
        "final_energy_mae",
        "models",
    )
    rows = []
    for schedule, workers in sorted(
        {(r["schedule"], r["workers"]) for r in runs}, key=lambda x: (x[1], x[0])
    ):
        group = [r for r in runs if (r["schedule"], r["workers"]) == (schedule, workers)]
        rows.append(
            {
                "schedule": schedule,
                "workers": workers,
                "seeds": len(group),
                "reached_target": sum(r["target_t_s"] is not None for r in group),
                **{k: _mean_sd([r[k] for r in group]) for k in keys},
            }
        )
    return rows


def measure(
    name: str,
    data_root: str | None,
    seeds: list[int],
    workers: list[int],
    work: Path,
    targets: dict,
    plan_options: dict,
    max_epochs: int | None = None,
    schedules: tuple[str, ...] = ("sync", "async"),
) -> dict:
    """``schedules`` for every seed and worker count (see the module docstring)."""
    setup = fixed_setup(name, data_root, work, max_epochs)
    spec = setup.spec
    plan = Plan(spec.initial_size, spec.batch_size, spec.rounds, **plan_options)
    section = {"batch_size": spec.batch_size}
    if spec.regularization is not None:
        section["regularization"] = spec.regularization
    settings = Acquisition(**section)

    cache: dict[int, dict] = {}

    def learner(seed: int, folder: str) -> Learner:
        (work / folder).mkdir(exist_ok=True)
        return Learner(
            setup.pool,
            setup.test,
            setup.start,
            setup.hyper,
            settings,
            spec.valid_fraction,
            seed,
            work / folder,
            trained=cache.setdefault(seed, {}),
        )

    runs = []
    for seed in seeds:
        times = label_times(seed, len(setup.pool))
        rounds = sync_run(learner(seed, f"sync-s{seed}"), plan) if "sync" in schedules else []
        for w in workers if rounds else []:
            clock = sync_clock(rounds, times, w)
            runs.append(
                {
                    "seed": seed,
                    "schedule": "sync",
                    "workers": w,
                    **outcome(clock, w, targets),
                    "evaluations": clock["evaluations"],
                }
            )
            print(runs[-1], flush=True)
        for w in workers if "async" in schedules else []:
            replay = AsyncReplay(learner(seed, f"async-w{w}-s{seed}"), plan, times, w).run()
            runs.append(
                {
                    "seed": seed,
                    "schedule": "async",
                    "workers": w,
                    **outcome(replay, w, targets),
                    "evaluations": replay["evaluations"],
                    "reranks": replay["reranks"],
                    "selections": replay["selections"],
                    "select_cpu_s": replay["select_cpu_s"],
                    "picked_by_version": replay["picked_by_version"],
                }
            )
            print(runs[-1], flush=True)
    return {
        "preset": name,
        "schedules": list(schedules),
        "plan": vars(plan) | {"budget": plan.budget},
        "latency": LATENCY,
        "targets": targets,
        "finetune": setup.hyper,
        "acquisition": settings.model_dump(),
        "pool": len(setup.pool),
        "test": len(setup.test),
        "table": table(runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = preset_parser(__doc__)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--jobs-per-worker", type=int, default=1, help="k: jobs in flight per worker"
    )
    parser.add_argument(
        "--train-every", type=int, help="m: new labels per fine-tune (default the batch size)"
    )
    parser.add_argument(
        "--train-on",
        choices=["batches", "arrived"],
        default="batches",
        help="async trainer: the oldest m new arrivals per model (batches) or every arrived label",
    )
    parser.add_argument(
        "--max-ahead",
        type=int,
        help="A: at most this many picks beyond the newest model's training set "
        "(streaming.max_ahead; default no cap)",
    )
    parser.add_argument(
        "--schedules", nargs="+", choices=["sync", "async"], default=["sync", "async"]
    )
    parser.add_argument("--energy-target", type=float, default=250.0, help="meV/atom")
    parser.add_argument("--force-target", type=float, default=275.0, help="meV/Å")
    args = parser.parse_args(argv)
    if args.max_ahead is not None:
        every = args.train_every or preset(args.preset, args.data_root)["batch_size"]
        if args.max_ahead < every:
            parser.error(
                f"--max-ahead {args.max_ahead} is below the {every} new labels a fine-tune waits "
                "for (--train-every, default the batch size): no fine-tune would start"
            )
    targets = {
        "energy_mae_mev_per_atom": args.energy_target,
        "force_mae_mev_per_a": args.force_target,
    }
    plan_options = {
        "jobs_per_worker": args.jobs_per_worker,
        "train_every": args.train_every,
        "train_on": args.train_on,
        "max_ahead": args.max_ahead,
    }
    return run_in_work_dir(
        args.threads,
        args.out,
        lambda work: measure(
            args.preset,
            args.data_root,
            args.seeds,
            args.workers,
            work,
            targets,
            plan_options,
            args.max_epochs,
            tuple(args.schedules),
        ),
    )


if __name__ == "__main__":
    main()
