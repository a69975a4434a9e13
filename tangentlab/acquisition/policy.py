"""The acquisition policy of a round, in one place: which structures normalise the feature
rows and how the campaign's scorer is fitted.

Campaigns (exploration, acquisition and the calibration of predicted errors) and the replay
benchmark's evaluation of a final model call `fit_policy_scorer`, so that every σ a campaign
shows or selects by comes from the same fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ase import Atoms

from tangentlab.acquisition.scorer import PosteriorScorer, fit_scorer

#: Pool structures (the first ones, without failed QM and without the round's own
#: exploration candidates) that join the labelled set in normalising the feature rows.
REFERENCE_SIZE = 256


def reference_structures(pool: Sequence[Atoms]) -> list[Atoms]:
    """The row-normalisation reference: the first `REFERENCE_SIZE` of ``pool``.

    ``pool`` is the campaign's pool in storage order, without the structures whose QM failed
    and without the candidates of the round being explored (so that exploration and the
    acquisition after it, also after a resume between them, share one fit).
    """
    return list(pool[:REFERENCE_SIZE])


def fit_policy_scorer(model, train: Sequence[Atoms], reference: Sequence[Atoms], settings: Any,
                      device: str | None = None, signal: str | None = None) -> PosteriorScorer:
    """The campaign's posterior scorer.

    Parameters
    ----------
    model
        The round's MACE model (float64).
    train
        The training labels' structures.
    reference
        :func:`reference_structures` of the pool.
    settings
        The campaign's :class:`tangentlab.config.Acquisition` section: λ and, for its own
        signal, the signal's options.
    device
        Torch device of the features.
    signal
        The signal to fit (default the acquisition's; exploration falls back to another when
        the acquisition has no feature rows).
    """
    signal = signal or settings.signal
    options = settings.signal_keywords() if signal == settings.signal else {}
    return fit_scorer(model, train, signal=signal, reference_atoms=list(reference),
                      regularization=settings.regularization, device=device, **options)
