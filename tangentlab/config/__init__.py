"""Campaign configuration: one validated settings object, stored with the campaign as JSON.

Every section forbids unknown keys, so a typo (``batchsize``) is an error that names the key
instead of a silently ignored setting. Defaults are the quick-start campaign (see README).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tangentlab.config.acquisition import FEATURELESS_METHODS, TARGET_KEYWORDS, Acquisition
from tangentlab.config.base import Section, refuse_if_set, registered, stored_configuration
from tangentlab.config.exploration import Exploration, SigmaBound
from tangentlab.config.sections import Budgets, FineTune, QMSettings, Streaming, Targets
from tangentlab.oracles import ORACLES
from tangentlab.oracles.pyscf import PySCFSettings
from tangentlab.paths import check_campaign_name

__all__ = [
    "DEVICE",
    "FEATURELESS_METHODS",
    "QM_THREADS_ORACLES",
    "QUICKSTART_POOL",
    "SHIPPED_MODEL",
    "TARGET_KEYWORDS",
    "Acquisition",
    "Budgets",
    "CampaignConfig",
    "ConfigError",
    "Exploration",
    "FineTune",
    "OracleSettings",
    "QMSettings",
    "Section",
    "SigmaBound",
    "Streaming",
    "Targets",
    "config_json",
    "interval_level",
    "interval_method",
    "load_config",
    "make_config",
    "read_stored_config",
    "registered",
    "shipped_file",
]


def shipped_file(name: str) -> str:
    """Path of a file that ships inside the package (``tangentlab/data/``)."""
    return str(resources.files("tangentlab") / "data" / name)


SHIPPED_MODEL = "tangentlab-hcno-xtb.model"
#: Torch devices a campaign may name; whether the device exists is checked where it runs.
DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]+)?")
QUICKSTART_POOL = "quickstart_pool.extxyz"
#: Oracles whose jobs take ``qm.num_threads``.
QM_THREADS_ORACLES = ("pyscf", "pyscf-pbc")


def _oracle_name(value: Any) -> str | None:
    """The oracle a section is for: its ``name``, 'pyscf' (the default) when it has none."""
    return value.get("name", "pyscf") if isinstance(value, dict) else getattr(value, "name", None)


def _known_oracle(value: Any) -> Any:
    name = _oracle_name(value)
    if isinstance(value, dict) and (not isinstance(name, str) or name not in ORACLES):
        raise PydanticCustomError("unknown_oracle", "unknown oracle name {name}; known: {known}",
                                  {"name": repr(name), "known": str(sorted(ORACLES))})
    return value


# The QM oracle: ``name`` picks one of `tangentlab.oracles.ORACLES`, the other keys are its
# settings (docs/oracles.md). One settings class per oracle, so each forbids unknown keys;
# they come from the registry, so that a new oracle needs no edit here.
OracleSettings = Annotated[
    Union[tuple(Annotated[oracle.settings_model, Tag(name)] for name, oracle in ORACLES.items())],  # noqa: UP007
    Discriminator(_oracle_name, custom_error_type="oracle_type",
                  custom_error_message="Input should be a mapping with the oracle's name and settings"),
    BeforeValidator(_known_oracle),
]


class CampaignConfig(Section):
    """Everything a campaign needs; stored verbatim (as JSON) with the campaign."""

    name: str = Field("quickstart", min_length=1, description="Campaign name (unique in the database).")
    pool: list[str] = Field(default_factory=lambda: [shipped_file(QUICKSTART_POOL)],
                            description="Candidate structure files (any ASE-readable format).")
    test_file: str | None = Field(None, description="Labelled-at-start test set; drawn from the pool when None.")
    test_size: int = Field(30, gt=0, description="Test structures drawn from the pool when test_file is None "
                           "(refused with test_file).")
    test_max_size: int | None = Field(
        None, gt=0, description="Grow the test set drawn from the pool from test_size up to this many "
        "structures, and only when its intervals are too wide to decide whether the targets are met "
        "(new test structures stratified by σ; docs/confidence.md). None: a fixed test set of test_size.")
    test_step: int = Field(10, gt=0, description="A growing test set adds a multiple of this many "
                           "structures at a time (refused without test_max_size).")
    initial_size: int = Field(10, gt=0, description="Random structures labelled before the first acquisition.")
    valid_fraction: float = Field(0.15, ge=0, lt=1, description="Share of labelled structures held out for early stopping.")
    model: str = Field(shipped_file(SHIPPED_MODEL), description="Starting MACE .model path.")
    work_dir: str = Field("runs", description="Folder for model versions and QM run directories.")
    seed: int = Field(0, ge=0, description="Seed for the test/initial draws and training.")
    device: str = Field("cpu", description="Torch device for acquisition and fine-tuning (cpu, cuda, cuda:1, mps).")
    targets: Targets = Field(default_factory=Targets,
                             description="Test-set errors at which the campaign stops.")
    budgets: Budgets = Field(default_factory=Budgets,
                             description="Limits at which the campaign stops.")
    oracle: OracleSettings = Field(
        default_factory=lambda: PySCFSettings(name="pyscf", xc="wb97x", basis="6-31g*"),
        description="The QM oracle that labels structures; `name` picks the kind (pyscf, xtb, emt, "
        "quacc, replay), the other keys are its settings.")
    acquisition: Acquisition = Field(default_factory=Acquisition,
                                     description="How each round chooses the structures to label.")
    qm: QMSettings = Field(default_factory=QMSettings, description="How QM jobs run: attempts, "
                           "time limit, parallel workers, Dask, a Prefect deployment.")
    finetune: FineTune = Field(default_factory=FineTune,
                               description="How each round fine-tunes the model.")
    exploration: Exploration | None = Field(None, description="Make candidates with the current model "
                                            "each round (None: choose from the pool only).")
    schedule: Literal["sync", "async"] = Field(
        "sync", description="sync: each round labels its whole batch, then fine-tunes (every QM worker "
        "waits). async: QM workers label a queue of picks while the model fine-tunes every "
        "`streaming.train_every` new labels; queued picks are re-ranked after each new model "
        "(docs/running.md, 'Synchronous or asynchronous rounds').")
    streaming: Streaming | None = Field(
        None, description="Settings of `schedule: async` (None: the defaults); refused with sync.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_campaign_name(value)

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError(f"{value!r} is not a torch device (cpu, cuda, cuda:N, mps or xpu)")
        return value

    @model_validator(mode="after")
    def _budget_covers_the_initial_set(self) -> CampaignConfig:
        # The initial set is labelled before any budget is checked, so it must fit in it.
        if self.initial_size > self.budgets.max_labels:
            raise ValueError(f"initial_size {self.initial_size} is larger than budgets.max_labels "
                             f"{self.budgets.max_labels} (test labels are not counted)")
        if self.test_max_size is not None:
            if self.test_file:
                raise ValueError("test_max_size grows a test set drawn from the pool: leave out test_file")
            if self.targets.confidence is None:
                raise ValueError("test_max_size needs targets.confidence: the test set grows when the "
                                 "intervals are too wide to decide")
            if self.test_max_size < self.test_size:
                raise ValueError(f"test_max_size {self.test_max_size} is smaller than test_size {self.test_size}")
        else:
            refuse_if_set(self, ["test_step"], "without test_max_size the test set does not grow")
        if self.test_file:
            refuse_if_set(self, ["test_size"], "the test set is test_file's structures, not a draw "
                          "from the pool")
        interval = self.targets.interval
        if interval not in ("auto", "bootstrap") and (why := self.no_ppi_because()):
            raise ValueError(f"targets.interval {interval!r} {why} (or use 'bootstrap')")
        if self.acquisition.target == "explored" and self.exploration is None:
            raise ValueError("acquisition.target 'explored' needs an exploration section")
        if self.acquisition.signal in FEATURELESS_METHODS and self.exploration is None:
            # λ serves only a feature signal's posterior (exploration's σ falls back to one)
            refuse_if_set(self.acquisition, ["regularization"],
                          f"signal {self.acquisition.signal!r} has no feature posterior and there is "
                          "no exploration section", prefix="acquisition.")
        return self

    def no_ppi_because(self) -> str | None:
        """Why this campaign cannot have prediction-powered intervals (None: it can): they
        estimate the MAE over the pool a test set was drawn from, from σ of a feature signal."""
        if self.test_file:
            return "estimates the MAE over the pool a test set was drawn from: leave out test_file"
        if self.acquisition.signal in FEATURELESS_METHODS:
            return f"needs σ from a feature signal; signal {self.acquisition.signal!r} has none"
        return None

    @model_validator(mode="after")
    def _streaming_needs_async(self) -> CampaignConfig:
        if self.schedule == "sync":
            if self.streaming is not None:
                raise ValueError("streaming has no effect with schedule 'sync' (set schedule: async "
                                 "or remove streaming)")
            return self
        for problem, present in (
            ("an exploration section: exploration makes a round's candidates with the round's "
             "model, while asynchronous picks come from the pool one at a time between rounds "
             "(use schedule: sync)", self.exploration is not None),
            ("acquisition.signal 'committee': its disagreement cannot be conditioned on picks "
             "whose labels are still being computed (a feature-space signal's variance can), so "
             "new picks could not account for the ones in flight (use a feature-space signal "
             "or schedule: sync)", self.acquisition.signal == "committee"),
        ):
            if present:
                raise ValueError(f"schedule 'async' does not support {problem}")
        if self.streaming is None:
            self.streaming = Streaming()
        every = self.streaming.train_every or self.acquisition.batch_size
        if self.streaming.max_ahead is not None and self.streaming.max_ahead < every:
            raise ValueError(f"streaming.max_ahead {self.streaming.max_ahead} is below the {every} "
                             "new labels a fine-tune waits for (streaming.train_every, default "
                             "acquisition.batch_size): no fine-tune would ever start")
        return self

    @model_validator(mode="after")
    def _qm_threads_need_an_oracle_that_takes_them(self) -> CampaignConfig:
        # Only the PySCF jobs take a thread count (tasks.label passes qm.num_threads to it); the
        # xTB, quacc-recipe and replay oracles would silently ignore it.
        if self.qm.num_threads is not None and self.oracle.name not in QM_THREADS_ORACLES:
            raise ValueError(f"qm.num_threads has no effect with oracle {self.oracle.name!r}: "
                             f"only {', '.join(QM_THREADS_ORACLES)} takes a thread count (remove "
                             "qm.num_threads)")
        return self

    def check_pool_size(self, pool_size: int) -> None:
        """Raise :class:`ConfigError` if a pool of ``pool_size`` distinct structures cannot
        hold the test set (when drawn from the pool) and the initial set."""
        drawn = 0 if self.test_file else self.test_size
        if drawn + self.initial_size > pool_size:
            keys = "initial_size" if self.test_file else f"test_size {self.test_size} + initial_size"
            raise ConfigError(f"{keys} {self.initial_size} is larger than the pool of {pool_size} distinct "
                              f"structures ({', '.join(self.pool)})")

    @field_validator("pool")
    @classmethod
    def _pool_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("pool needs at least one structure file")
        return value


class ConfigError(ValueError):
    """A campaign configuration that cannot be used; the message names each problem."""


def _explain(exc: ValidationError, source: str) -> ConfigError:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        elif err["type"] == "value_error":  # our own validators' words, without "Value error, "
            problems.append(f"{where}: {err['ctx']['error']}")
        else:
            problems.append(f"{where}: {err['msg']}")
    return ConfigError(f"invalid campaign configuration {source}: " + "; ".join(problems))


def make_config(data: dict[str, Any] | None = None, *, source: str = "") -> CampaignConfig:
    """Validate a configuration mapping; raise :class:`ConfigError` naming every problem."""
    try:
        return CampaignConfig.model_validate(data or {})
    except ValidationError as exc:
        raise _explain(exc, source) from None


def read_stored_config(data: dict[str, Any], *, source: str = "") -> CampaignConfig:
    """A configuration as the database stored it with a campaign.

    A campaign stored before ``targets.confidence`` existed keeps deciding on point estimates
    (its ``confidence`` is None), and one stored before ``targets.interval`` existed keeps the
    bootstrap interval (the only one then), so that resuming it does not change its stop rule.
    """
    targets = data.get("targets") if isinstance(data, dict) else None
    if isinstance(targets, dict):
        earlier = {"confidence": None, "interval": "bootstrap"}  # what a campaign without the key had
        data = {**data, "targets": {**{k: v for k, v in earlier.items() if k not in targets}, **targets}}
    with stored_configuration():  # keys an earlier version stored without effect still load
        return make_config(data, source=source)


def load_config(path: str | Path) -> CampaignConfig:
    """Read a YAML or JSON campaign configuration file.

    Relative structure and model paths are taken relative to the file's folder. The file must
    be a regular file under the input size limit and may hold no YAML aliases
    (`tangentlab.inputs.load_yaml`), and it must name its ``pool``: the quick-start pool is
    the ``tangentlab quickstart`` campaign's, never a silent default.
    """
    from tangentlab.inputs import InputFileError, load_yaml, yaml_problem

    path = Path(path)
    try:
        data = load_yaml(path, "configuration file")
    except InputFileError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML/JSON: "
                          f"{yaml_problem(exc)}") from None
    if data is None:  # an empty file must not mean "all defaults": that is the quick-start campaign
        raise ConfigError(f"configuration file {path} is empty (`tangentlab init-config` writes one to edit)")
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping, got {type(data).__name__}")
    base = path.parent
    for key in ("model", "test_file", "work_dir"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    acquisition = data.get("acquisition")
    if isinstance(acquisition, dict) and isinstance(acquisition.get("target"), str) \
            and acquisition["target"] not in TARGET_KEYWORDS and not Path(acquisition["target"]).is_absolute():
        data["acquisition"] = {**acquisition, "target": str(base / acquisition["target"])}
    if isinstance(data.get("pool"), list):
        data["pool"] = [p if Path(str(p)).is_absolute() else str(base / str(p)) for p in data["pool"]]
    exploration = data.get("exploration")
    if isinstance(exploration, dict):
        exploration = dict(exploration)
        if isinstance(exploration.get("seeds"), str) and exploration["seeds"] != "labelled" \
                and not Path(exploration["seeds"]).is_absolute():
            exploration["seeds"] = str(base / exploration["seeds"])
        if isinstance(exploration.get("neb_endpoints"), list):
            exploration["neb_endpoints"] = [p if Path(str(p)).is_absolute() else str(base / str(p))
                                            for p in exploration["neb_endpoints"]]
        data["exploration"] = exploration
    no_pool = ("pool: missing: name the candidate structure files (`pool: [candidates.extxyz]`); "
               "the quick-start pool is only `tangentlab quickstart`'s") if "pool" not in data else None
    try:
        config = make_config(data, source=f"in {path}")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {no_pool}" if no_pool else str(exc)) from None
    if no_pool:
        raise ConfigError(f"invalid campaign configuration in {path}: {no_pool}")
    return config


def interval_level(config: CampaignConfig) -> float:
    """The level of the campaign's test-error intervals: ``targets.confidence``, or the
    default level (`tangentlab.confidence.DEFAULT_LEVEL`) when the point estimates decide."""
    from tangentlab.confidence import DEFAULT_LEVEL

    return DEFAULT_LEVEL if config.targets.confidence is None else config.targets.confidence


#: The prediction-powered interval ``targets.interval: auto`` resolves to where the campaign
#: can have one (chosen on the h2-validation split and acac, docs/benchmarks/confidence.md).
#: A campaign stored with 'auto' gets the current choice when it is resumed.
AUTO_PPI = "ppi-pool"


def interval_method(config: CampaignConfig) -> str:
    """How the campaign's test-error intervals are computed: ``targets.interval``, with
    'auto' resolved to `AUTO_PPI` where the campaign has what it needs (a feature signal, a
    test set drawn from the pool) and to 'bootstrap' elsewhere."""
    chosen = config.targets.interval
    if chosen != "auto":
        return chosen
    return "bootstrap" if config.no_ppi_because() else AUTO_PPI


def config_json(config: CampaignConfig) -> dict[str, Any]:
    """The configuration as plain JSON-ready data (what the database stores)."""
    return json.loads(config.model_dump_json())
