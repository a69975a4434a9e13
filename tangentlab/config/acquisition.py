"""The ``acquisition`` section: how each round chooses the structures to label."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from tangentlab.config.base import Section, refuse_if_set, registered

#: Acquisition methods without feature rows (the baselines).
FEATURELESS_METHODS = ("random", "committee")
#: ``acquisition.target`` values that name a set of the campaign itself rather than a file.
TARGET_KEYWORDS = ("pool", "test", "explored")


class Acquisition(Section):
    """How each round chooses the structures to label (docs/reference/acquisition.md).

    ``signal`` is a feature map of `tangentlab.acquisition.signals.SIGNALS`, or one of the
    baselines without feature rows (``random``, ``committee``). ``method`` is the old name of
    this key and is still read (configurations stored by earlier versions). The defaults
    (activation kernel + transductive over the test structures) were chosen on the
    h2-validation benchmark split and reported on h2-heldout (docs/benchmarks/README.md).
    """

    signal: str = Field(
        "activation",
        description="Feature map (activation, atom_activation, ntk, force_ntk, energy_force_ntk, random_mace, "
        "fixed_descriptor) or a baseline without features (random, committee).",
    )
    rule: str = Field(
        "transductive",
        description="Batch rule on the shortlist: transductive, greedy, lcmd, kmeans++ or top.",
    )
    target: str = Field(
        "test",
        description="What the transductive rule reduces the uncertainty on: 'pool'; 'test' (the "
        "campaign's test_file structures, positions only, never their labels; the pool when the test set "
        "is drawn from it); 'explored' (the round's exploration candidates; needs an exploration section); "
        "or a file of unlabelled structures the potential must serve (MD frames, a NEB guess). "
        "Only the transductive rule has a target: another value than the default with another "
        "rule is refused.",
    )
    sigma_quantile: float | None = Field(
        None, gt=0, le=1,
        description="Outlier guard: never label a candidate whose σ² lies above this quantile of "
        "the pool's σ² (None: no guard).",
    )
    max_force: float | None = Field(
        None, gt=0,
        description="Outlier guard on forces: never label a candidate whose largest force component, "
        "as the current model predicts it, exceeds this bound (eV/Å; the upper trust level of DP-GEN on "
        "predicted forces). None: no guard.",
    )
    signal_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the signal (e.g. sketch_dim, parameters for the NTKs).",
    )
    committee_size: int = Field(3, ge=2, description="Members fine-tuned per round for signal 'committee' "
                                "(another value with another signal is refused).")
    batch_size: int = Field(10, gt=0, description="Structures labelled per round.")
    regularization: float = Field(1e-2, gt=0, description="λ of the feature-space posterior A = ΦᵀΦ + λI "
                                  "(with signal random or committee, only exploration's σ uses it).")
    feature_batch_size: int = Field(64, gt=0, description="Structures per MACE forward pass of the "
                                    "signal (another value with a signal that makes no forward "
                                    "passes, fixed_descriptor, random or committee, is refused).")

    @model_validator(mode="before")
    @classmethod
    def _method_is_the_old_name_of_signal(cls, data: Any) -> Any:
        if isinstance(data, dict) and "method" in data:
            if "signal" in data:
                raise ValueError("give 'signal' or its old name 'method', not both")
            data = {**data, "signal": data["method"]}
            del data["method"]
        return data

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        from tangentlab.acquisition.signals import ALIASES, SIGNALS

        value = ALIASES.get(value, value)
        if value not in SIGNALS and value not in FEATURELESS_METHODS:
            raise ValueError(f"unknown signal {value!r}; choose from {[*SIGNALS, *FEATURELESS_METHODS]}")
        return value

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        from tangentlab.acquisition.rules import RULES

        return registered(value, RULES, "batch rule")

    @model_validator(mode="after")
    def _options_belong_to_the_signal(self) -> Acquisition:
        from tangentlab.acquisition.signals import SIGNALS

        if self.signal in FEATURELESS_METHODS:
            if self.signal_options:
                raise ValueError(f"signal {self.signal!r} takes no signal_options")
            return self
        unknown = sorted(set(self.signal_options) - set(SIGNALS[self.signal].options))
        if unknown:
            raise ValueError(f"signal_options {unknown} are not options of {self.signal!r}; "
                             f"its options are {sorted(SIGNALS[self.signal].options)}")
        return self

    @model_validator(mode="after")
    def _target_needs_the_transductive_rule(self) -> Acquisition:
        # The default target is tolerated with any rule: written-out and stored configurations
        # carry every key. Any other value would be silently ignored, so it is refused.
        if self.rule != "transductive" and self.target != type(self).model_fields["target"].default:
            raise ValueError(f"target {self.target!r} has no effect with rule {self.rule!r}: only "
                             "the transductive rule has a target (remove target, or use rule: "
                             "transductive)")
        return self

    @model_validator(mode="after")
    def _settings_the_signal_uses(self) -> Acquisition:
        # A key that the chosen signal never reads would be silently ignored, so a value other
        # than its default is refused by name (defaults are tolerated: written-out and stored
        # configurations carry every key).
        from tangentlab.acquisition.signals import SIGNALS

        if self.signal in FEATURELESS_METHODS:
            refuse_if_set(self, ["rule", "target", "sigma_quantile", "max_force", "feature_batch_size"],
                          f"signal {self.signal!r} selects without feature rows, σ or a batch rule")
        elif "forward_batch_size" not in SIGNALS[self.signal].options:
            refuse_if_set(self, ["feature_batch_size"], f"signal {self.signal!r} makes no MACE forward passes")
        if self.signal != "committee":
            refuse_if_set(self, ["committee_size"], f"it is for signal 'committee', not {self.signal!r}")
        return self

    def rule_description(self) -> str:
        """The rule with its target and guards, e.g. ``transductive over test, σ² ≤ q0.9``."""
        target = f" over {self.target}" if self.rule == "transductive" and self.target != "pool" else ""
        guard = f", σ² ≤ q{self.sigma_quantile:g}" if self.sigma_quantile is not None else ""
        guard += f", max force ≤ {self.max_force:g} eV/Å" if self.max_force is not None else ""
        return f"{self.rule}{target}{guard}"

    def signal_keywords(self) -> dict[str, Any]:
        """The signal's own options (`make_featurizer` keywords), with the forward batch size."""
        from tangentlab.acquisition.signals import SIGNALS

        options = dict(self.signal_options)
        if "forward_batch_size" in SIGNALS[self.signal].options:
            options.setdefault("forward_batch_size", self.feature_batch_size)
        return options
