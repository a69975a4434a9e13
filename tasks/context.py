"""One round's shared state: the round's model, loaded once, and its scorer, fitted once.

Exploration, acquisition (selection, error calibration, force guard) and the selection
diagnostics of round ``n`` all use the model that round ``n - 1`` trained and the scorer fitted
on the training labels with the reference rows of
:func:`tangentlab.acquisition.policy.reference_structures`. `round_context` builds that once
per process and round; a resumed run builds the same one again (the reference leaves out the
round's own exploration candidates and failed structures, so it does not depend on whether
exploration ran in this process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from db import exploration, labels, registry, session_scope, structures
from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
from tangentlab.config import CampaignConfig
from tangentlab.mace_model import load_model
from tasks._db import engine_for


@dataclass
class RoundContext:
    """The model, labelled sets and fitted scorers of one round."""

    key: tuple
    config: CampaignConfig
    model_path: str
    model: Any
    train: list
    valid: list
    reference: list
    scorers: dict[str, Any] = field(default_factory=dict)

    def scorer(self, signal: str | None = None):
        """The round's scorer for ``signal`` (default the acquisition's), fitted on first use."""
        signal = signal or self.config.acquisition.signal
        if signal not in self.scorers:
            self.scorers[signal] = fit_policy_scorer(
                self.model,
                self.train,
                self.reference,
                self.config.acquisition,
                self.config.device,
                signal,
            )
        return self.scorers[signal]


_CURRENT: list[RoundContext] = []  # the one context this process holds


def round_context(
    url: str, campaign_id: int, config: CampaignConfig, round_number: int, model_version_id: int
) -> RoundContext:
    """The context of round ``round_number`` with model ``model_version_id`` (built once)."""
    key = (url, campaign_id, round_number, model_version_id)
    if _CURRENT and _CURRENT[0].key == key:
        return _CURRENT[0]
    _CURRENT.clear()
    with session_scope(engine_for(url)) as session:
        failed = labels.failed_structure_ids(session, campaign_id)
        explored = {
            s.id
            for s in exploration.explored_structures(
                session, campaign_id, round_number, split="pool"
            )
        }
        pool = [
            s
            for s in structures.campaign_structures(session, campaign_id, split="pool")
            if s.id not in failed and s.id not in explored
        ]
        reference = [structures.structure_atoms(s) for s in reference_structures(pool)]
        train = labels.labelled_atoms(session, campaign_id, ["train"])
        valid = labels.labelled_atoms(session, campaign_id, ["valid"])
        model_path = registry.verified_model_path(session, model_version_id)
    context = RoundContext(
        key,
        config,
        model_path,
        load_model(model_path, device=config.device),
        train,
        valid,
        reference,
    )
    _CURRENT.append(context)
    return context


def release_context() -> None:
    """Drop the context this process holds (its round is selected)."""
    _CURRENT.clear()
