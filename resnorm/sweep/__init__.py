"""Sweeps: a grid of training configurations run as nested children of one parent run.

``planner`` says which configurations a preset or grid stands for; ``runner`` owns the parent run and
resumes what did not finish; ``executors`` start the children (local subprocesses or Ray Tune trials).
"""

from resnorm.sweep.planner import PRESET_SPECS, PRESETS, child_name, parse_grid, plan

__all__ = ["PRESETS", "PRESET_SPECS", "child_name", "parse_grid", "plan"]
