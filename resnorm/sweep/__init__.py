"""Sweeps: a grid of training configurations run as nested children of one parent run.

``planner`` says which configurations a preset or grid stands for; ``runner`` owns the parent run and
resumes what did not finish; ``pool`` (local worker processes, forked by ``forkserver``) and
``raytune`` (Ray Tune trials) train the children.

The names below load the planner (and torch) on first use, so that ``resnorm.sweep.forkserver`` can
be imported before anything heavy.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnorm.sweep.planner import PRESET_SPECS, PRESETS, child_name, parse_grid, plan

__all__ = ["PRESETS", "PRESET_SPECS", "child_name", "parse_grid", "plan"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("resnorm.sweep.planner"), name)
    raise AttributeError(f"module 'resnorm.sweep' has no attribute {name!r}")
