"""Benchmarks: acquisition methods compared on replayed labelled data, and acquisition speed.

- ``methods.py``: benchmark method names -> a campaign's ``acquisition`` section;
- ``spec.py``: the benchmark specification and the presets in ``presets/*.yaml``;
- ``data.py``: pool and test files drawn from labelled data, campaign configurations;
- ``analysis.py``: learning curves, labels-to-reach, seed-paired differences with intervals;
- ``report.py``: the summary, plots and tables;
- ``acquisition_speed.py``: throughput and memory of the acquisition engine;
- ``force_ntk_cost.py``: force-aware NTK rows as a multiple of inference, probes against exact;
- ``model_shapes.py``, ``foundation_models.py``: MACE-MP-0/MACE-OFF23-shaped models through a round.

``flows/benchmark.py`` runs the campaigns; ``tangentlab benchmark replay|acquisition`` is the
command (``cli/benchmark.py``).
"""
