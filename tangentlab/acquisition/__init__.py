"""Acquisition: which structures to label next, from the current model's own features.

One entry point, `select_batch`; the pieces are found by name:

- ``signals.py``: the registry of feature maps (activation kernel, energy/force/joint NTK,
  random-init MACE, fixed descriptor); ``activations.py``, ``ntk.py`` (with ``sketch.py``,
  its two methods in ``ntk_per_sample.py`` and ``ntk_double_backward.py`` and the slow
  references in ``ntk_reference.py``), ``descriptors.py`` compute the rows;
- ``posterior.py``: σ² in feature space and the fitted `PosteriorScorer`;
- ``rules.py``: the registry of batch rules (greedy, transductive, LCMD, k-means++, top)
  and ``transductive.py``: target-aware selection;
- ``select.py``: the streamed, chunked shortlist and the batch, from a fitted scorer;
- ``policy.py``: a campaign's reference rows and scorer fit (one place for campaigns and
  benchmarks);
- ``calibration.py``: σ as a predicted error;
- ``committee.py`` (`CommitteeScorer`, a scorer like `PosteriorScorer`) and `random_selection`:
  the two baselines without feature rows.
"""

from tangentlab.acquisition.calibration import calibrate_uncertainty, spearman, uncertainty_quality
from tangentlab.acquisition.rules import RULES, random_selection
from tangentlab.acquisition.scorer import PosteriorScorer, fit_scorer
from tangentlab.acquisition.select import iter_pool_chunks, iter_structure_files, select_batch
from tangentlab.acquisition.signals import SIGNALS, make_featurizer

__all__ = [
    "RULES",
    "SIGNALS",
    "PosteriorScorer",
    "calibrate_uncertainty",
    "fit_scorer",
    "iter_pool_chunks",
    "iter_structure_files",
    "make_featurizer",
    "random_selection",
    "select_batch",
    "spearman",
    "uncertainty_quality",
]
