"""Meta-World as a data source: scripted experts, per-substep contacts, exact calibration."""

from wallwm.data.sources.sim.source import TASKS, SimSource, episode_seed

__all__ = ["TASKS", "SimSource", "episode_seed"]
