"""Exploration: the campaign makes its own candidates by running the current model.

`explore` runs an engine (`engines.ENGINES`: md, rattle, neb) from seed structures, gives
every sampled frame σ from the acquisition scorer, stops trajectories that leave known ground
(`Bounds`) or physics (`guards`), and hands each finished trajectory's candidates to the
caller (tasks/explore.py stores them as pool structures).
"""

from tangentlab.exploration.engines import ENGINES, Frame, Trajectory, Walker
from tangentlab.exploration.explore import Bounds, candidates, explore, plan_walkers, resolve_bounds
from tangentlab.exploration.guards import STOP_REASONS, fragment_count, unphysical

__all__ = ["ENGINES", "STOP_REASONS", "Bounds", "Frame", "Trajectory", "Walker", "candidates", "explore",
           "fragment_count", "plan_walkers", "resolve_bounds", "unphysical"]
