"""What a sweep was asked for (``SweepSpec``: its plan's inputs and how its children are launched), and
what a re-run into its parent must ask for again."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from resnorm.config import FIELD_TYPES, Launch, parse_value
from resnorm.errors import ConfigError
from resnorm.sweep.planner import AUTO, FIRST_ROUND_SEEDS, MARGIN, MAX_SEEDS
from resnorm.tracking import unquote_param


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep was asked for: its plan's inputs and how its children are launched."""

    preset: str
    grid: str
    seeds: int | None  # seeds per configuration; None: adaptive (seeds=auto), in rounds up to max_seeds
    executor: str  # local, ray
    parallel: int  # children at once; 0: one per GPU, or 1 without GPUs
    ray_address: str
    training: Mapping[str, str]  # training parameters for every child, as text ("" = the preset's)
    launch: Launch = Launch()  # every child's device and mode (its threads: its share of the CPUs)
    storage_path: str = ""  # ray: where Tune keeps its state (empty: a temporary folder here)
    max_seeds: int = MAX_SEEDS  # adaptive: the most seeds a configuration gets
    margin: float = MARGIN  # adaptive: the claims' smallest effect of interest, in accuracy points

    def __post_init__(self) -> None:
        if self.parallel < 0:
            raise ConfigError(f"parallel must be at least 0, got {self.parallel}")
        if self.adaptive and self.max_seeds < FIRST_ROUND_SEEDS:
            raise ConfigError(
                f"max_seeds {self.max_seeds} is below the {FIRST_ROUND_SEEDS} seeds of an adaptive sweep's "
                f"first round; give max_seeds >= {FIRST_ROUND_SEEDS}"
            )
        if not (math.isfinite(self.margin) and 0.01 <= self.margin <= 50):
            raise ConfigError(f"margin {self.margin} is not a number of accuracy points from 0.01 to 50")

    @property
    def adaptive(self) -> bool:
        return self.seeds is None

    @property
    def first_seeds(self) -> int:
        """Seeds per configuration of the plan (of its first round, when adaptive)."""
        return FIRST_ROUND_SEEDS if self.seeds is None else self.seeds

    def params(self, parallel: int) -> dict[str, str]:
        return {
            "preset": self.preset,
            "grid": self.grid,
            "seeds": AUTO if self.adaptive else str(self.seeds),
            "max_seeds": str(self.max_seeds),
            "margin": f"{self.margin:g}",
            "executor": self.executor,
            "parallel": str(parallel),
            "ray_address": self.ray_address,
            "device": self.launch.device,
            "mode": self.launch.mode,
            "storage_path": self.storage_path,
            **{k: str(v) for k, v in self.training.items()},
        }


# What a sweep re-run into its parent must repeat: what it plans and how its children train
# (executor, parallel, Ray's address and storage may change between attempts).
SAME_ON_RERUN = ("preset", "grid", "seeds", "max_seeds", "margin", "device", "mode", *FIELD_TYPES)


def _rerun_value(key: str, text: str):
    text = unquote_param(text).strip()
    if key in FIELD_TYPES and text:
        return parse_value(key, text)
    if key in ("max_seeds", "margin") and text:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def check_same_sweep(existing: Mapping[str, str], params: Mapping[str, str], run_id: str) -> None:
    """A re-run into ``run_id`` must ask for the sweep it continues: its params would lie otherwise.
    A sweep of fixed seeds ignores max_seeds and margin."""
    fixed = _rerun_value("seeds", existing.get("seeds", params["seeds"])) != AUTO
    changed = [
        f"{k}={unquote_param(existing[k])!r} (now {params[k]!r})"
        for k in SAME_ON_RERUN
        if k in existing
        and k in params
        and _rerun_value(k, existing[k]) != _rerun_value(k, params[k])
        and not (fixed and k in ("max_seeds", "margin"))
    ]
    if changed:
        raise ConfigError(f"run {run_id} is a sweep with {', '.join(changed)}; resume it with the same parameters")
