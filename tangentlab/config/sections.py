"""The sections whose keys are checked within the section: ``targets``, ``budgets``, ``qm``,
``finetune`` and ``streaming`` (the rules between sections are on
:class:`tangentlab.config.CampaignConfig`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tangentlab.config.base import Section


class Targets(Section):
    """Stop when the test-set errors are at or below both targets (at a confidence level)."""

    energy_mae_mev_per_atom: float = Field(160.0, gt=0, description="Energy MAE target (meV/atom).")
    force_mae_mev_per_a: float = Field(450.0, gt=0, description="Force MAE target (meV/Å).")
    force_atoms: Literal["free", "all"] = Field(
        "free", description="Atoms the test-set force MAE is taken over: 'free' (those no FixAtoms or "
        "FixCartesian holds, e.g. a slab's bottom layers; every atom when nothing is fixed) or 'all'.")
    confidence: float | None = Field(
        0.9, ge=0.5, lt=1, description="Level of the test errors' intervals (targets.interval): targets are "
        "met only when the upper end is at or below them, and a target whose lower end stays above "
        "it while the learning curve has flattened stops the campaign as out of reach "
        "(docs/confidence.md). None: the point estimates decide, as without intervals.")
    interval: Literal["auto", "bootstrap", "ppi", "ppi-t", "ppi-pool"] = Field(
        "auto", description="How the test errors' intervals are computed: 'bootstrap' "
        "(studentized bootstrap over the test structures), 'ppi' (prediction-powered: the MAE "
        "over the unlabelled pool from the calibrated σ of every pool structure, corrected on the "
        "test labels; it sees far-off structures the test set lacks, as far as σ ranks them; a "
        "bootstrap-t interval), 'ppi-t' (the same estimate with a Student t interval), 'ppi-pool' "
        "(the same estimate with a bootstrap-t of test sets drawn from the pool's predicted "
        "errors) or 'auto' ('ppi-pool' where the campaign has a feature signal and a test set drawn from the pool, else "
        "'bootstrap'; chosen on the h2-validation split, docs/benchmarks/confidence.md). "
        "The prediction-powered intervals need both; a round with fewer than two validation labels gets the "
        "bootstrap interval (docs/confidence.md).")


class Budgets(Section):
    """Stop when any budget is used up (whichever comes first)."""

    max_labels: int = Field(90, gt=0, description="Training+validation labels (test labels not counted).")
    max_rounds: int = Field(8, gt=0, description="Acquisition rounds after the initial set.")
    max_wall_time_s: float = Field(3600.0, gt=0, description="Campaign wall time over all runs (s).")


class QMSettings(Section):
    """Running QM jobs."""

    max_attempts: int = Field(2, gt=0, description="Tries per label before it is marked failed.")
    timeout_s: float = Field(600.0, gt=0, description="Wall-time limit of one QM job (s).")
    max_parallel: int = Field(1, gt=0, description="QM jobs run at the same time.")
    num_threads: int | None = Field(
        None, gt=0, description="OpenMP threads per QM job (None: the library's default). "
        "Honoured by the pyscf and pyscf-pbc oracles only; set with another oracle it is refused.")
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="Where the `max_parallel` label workers run: threads of the flow's process, "
        "or Dask workers (a LocalCluster, `dask_address`, or `dask_cluster_class`, e.g. Slurm).")
    dask_address: str | None = Field(
        None, description="Scheduler of a running Dask cluster (tcp://host:8786); None: start a cluster.")
    dask_cluster_class: str | None = Field(
        None, description="Cluster to start, e.g. 'dask_jobqueue.SLURMCluster'; None: distributed.LocalCluster.")
    dask_cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keywords for the cluster class (LocalCluster default: one "
        "single-threaded worker process per label worker).")
    dask_adapt_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keywords for cluster.adapt(), e.g. {minimum: 0, maximum: 20}.")
    deployment: str | None = Field(
        None, description="Prefect deployment ('label/label-cpu') that labels on a CPU work pool; "
        "None: label inside the campaign's own flow run.")

    @model_validator(mode="after")
    def _dask_settings_consistent(self) -> QMSettings:
        dask_keys = [k for k in ("dask_address", "dask_cluster_class", "dask_cluster_kwargs", "dask_adapt_kwargs")
                     if getattr(self, k)]
        if dask_keys and self.task_runner != "dask":
            raise ValueError(f"{', '.join(dask_keys)} set but task_runner is {self.task_runner!r} (use 'dask')")
        if self.dask_address and len(dask_keys) > 1:
            raise ValueError("dask_address connects to a running cluster: leave out dask_cluster_class, "
                             "dask_cluster_kwargs and dask_adapt_kwargs")
        return self


class FineTune(Section):
    """Fine-tuning settings (see tangentlab.finetune.FineTuneHyperparameters)."""

    max_epochs: int = Field(40, gt=0, description="Epochs per round at most.")
    patience: int = Field(8, gt=0, description="Stop a round after this many epochs without a "
                          "lower validation loss and keep the best epoch's model (patience = "
                          "max_epochs: a fixed budget).")
    lr: float = Field(2e-3, gt=0, description="Learning rate (Adam).")
    batch_size: int = Field(8, gt=0, description="Structures per optimiser step.")
    energy_weight: float = Field(
        30.0, ge=0, description="Weight of the per-atom energy MSE (eV²). Chosen on the "
        "h2-validation benchmark: with 1, energies were < 2 % of the loss and drifted between "
        "reaction channels.")
    forces_weight: float = Field(10.0, ge=0, description="Weight of the force MSE (eV²/Å²).")
    stress_weight: float = Field(
        0.0, ge=0, description="Weight of the stress MSE ((eV/Å³)²) over labels that carry a stress "
        "(structures periodic in all three directions, from an oracle that gives one: emt, "
        "quacc recipes); 0, the default, leaves stress out of fine-tuning.")
    ema_decay: float = Field(0.95, ge=0, lt=1, description="Decay of the exponential moving "
                             "average of the weights that is evaluated and kept.")
    e0_refit_interval: int = Field(5, gt=0, description="Epochs between refits of the per-element "
                                   "reference energies (E0) by least squares on the training set.")
    min_steps_per_epoch: int = Field(10, gt=0, description="Optimiser steps per epoch at least (small sets are cycled).")
    min_valid: int = Field(5, gt=0, description="Validation structures needed to early-stop on them (else the train loss).")
    start: Literal["previous", "pretrained"] = Field(
        "previous", description="Start each round from the previous round's model (warm start) or afresh "
        "from the campaign's starting model (no path dependence between rounds).")

    def hyperparameters(self) -> dict[str, Any]:
        """The keywords of `tangentlab.finetune.FineTuneHyperparameters` (everything but ``start``)."""
        return self.model_dump(exclude={"start"})


class Streaming(Section):
    """Asynchronous rounds (``schedule: async``): labelling and fine-tuning run at once."""

    jobs_per_worker: int = Field(
        2, gt=0, description="Picks kept queued or running per QM worker (k): one keeps every "
        "worker busy, more keep them busy while a fine-tune holds up the next pick.")
    train_every: int | None = Field(
        None, gt=0, description="New labels that start a fine-tune (m); None: acquisition.batch_size. "
        "The first fine-tune waits for the initial set.")
    train_on: Literal["batches", "arrived"] = Field(
        "batches", description="What each fine-tune trains on. batches: the previous model's labels "
        "and the oldest `train_every` labels that arrived since (the first model: the initial set), "
        "so model n trains on as many labels as synchronous round n; later arrivals wait for the next "
        "fine-tune. arrived: every label that has arrived (more labels per model when they arrive "
        "faster than a fine-tune).")
    max_ahead: int | None = Field(
        None, gt=0, description="At most this many picks beyond the newest model's training set "
        "(queued, running or labelled; the initial set counts, and a failed label does not): no new "
        "pick is made until a newer model arrives, so fewer labels come from older models and fewer "
        "are started before the targets are met, at the price of workers left idle. At least "
        "`train_every` (or a fine-tune could never start); equal to it, every worker waits during "
        "each fine-tune as in synchronous rounds. None: no cap (jobs_per_worker alone).")
