"""A sweep's plan: which training configurations a preset or a grid stands for. No MLflow here.

A sweep is a list of ``TrainConfig``s: a base (the train defaults, a preset's own defaults,
then what the user passed), and on top of it one point per configuration (a preset's list,
or the cartesian product of a grid), each repeated with ``seeds`` seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from resnorm.config import FIELD_TYPES, TrainConfig, parse_value
from resnorm.errors import ConfigError
from resnorm.norms import NORM_NAMES

PRESETS = ("quick", "study", "custom")
AUTO = "auto"  # seeds=auto: an adaptive sweep, in rounds (analysis.sequential)
FIRST_ROUND_SEEDS = 3  # an adaptive sweep's first round: the fewest seeds whose spread says something
MAX_SEEDS = 40  # an adaptive sweep's cap on seeds per configuration, by default
MARGIN = 1.0  # an adaptive sweep's smallest effect of interest, in accuracy points, by default


def parse_seeds(text: str | int) -> int | None:
    """``seeds`` as given: a whole number of at least 1, or ``auto`` (returned as None)."""
    value = str(text).strip()
    if value.lower() == AUTO:
        return None
    try:
        seeds = int(value)
    except ValueError:
        seeds = 0
    if seeds < 1 or str(seeds) != value.lstrip("+"):
        raise ConfigError(f"seeds {value!r} is not a whole number of at least 1 or {AUTO!r}")
    return seeds


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"norm=bn,gn;batch_size=8,128"`` -> ``{"norm": ["bn", "gn"], "batch_size": [8, 128]}``."""
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        field, sep, values = part.partition("=")
        field = field.strip()
        if not sep or not values.strip():
            raise ConfigError(f"grid entry {part!r} is not name=value[,value...]")
        if field in grid:
            raise ConfigError(f"grid names {field!r} twice")
        grid[field] = [parse_value(field, v) for v in values.split(",")]
    return grid


def _study_points() -> list[dict[str, Any]]:
    """The grid behind the study's Tables 1-5 and Figures 1-6 (27 configurations)."""
    sgd = [{"norm": n} for n in NORM_NAMES]  # Table 3, Figure 4: SGD 0.1 with augmentation
    no_aug = [{"norm": "torch_bn", "augment": False}]  # Table 1
    adam = [{"norm": n, "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-7} for n in NORM_NAMES]  # Table 4
    slow_sgd = [{"norm": n, "lr": 1e-4} for n in NORM_NAMES]  # Table 5, Figure 1
    batches = [{"norm": n, "batch_size": b} for n in ("bn", "gn") for b in (8, 128)]  # Figures 5, 6
    step = [{"norm": "torch_bn", "scheduler": "step"}]  # StepLR against cosine
    return sgd + no_aug + adam + slow_sgd + batches + step


# preset -> (its defaults under the user's values, its points)
PRESET_SPECS: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "study": ({}, _study_points()),
    # The demo: the digits at their own 8x8 pixels, ResNet-8, 15 epochs: every norm >= 90 % test
    # accuracy (seeds 0-2), training about 85 CPU-seconds in all (measured for issue 9).
    "quick": ({"epochs": 15, "image_size": 8, "n": 1, "data": "digits"}, [{"norm": n} for n in NORM_NAMES]),
}


def plan(preset: str, grid: str = "", seeds: int = 1, overrides: Mapping[str, str] | None = None) -> list[TrainConfig]:
    """The configurations of a sweep, in order, each validated.

    ``overrides`` are the user's training parameters as text; empty values are left out. A
    value a preset point or the grid sets wins over an override of the same name.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    if preset == "custom":
        axes = parse_grid(grid)
        if not axes:
            raise ConfigError("preset 'custom' needs a grid, e.g. grid='norm=bn,gn;batch_size=8,128'")
        defaults: dict[str, Any] = {}
        points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    elif grid.strip():
        raise ConfigError(f"a grid is only used with preset 'custom', not with {preset!r}")
    else:
        defaults, points = PRESET_SPECS[preset]
    user = {k: parse_value(k, v) for k, v in (overrides or {}).items() if str(v).strip()}
    base = {**defaults, **user}
    first_seed = base.pop("seed", TrainConfig().seed)
    configs = []
    for point in points:
        for s in range(seeds):
            fields = {**base, **point}
            fields.setdefault("seed", first_seed + s)
            configs.append(TrainConfig(**fields))
    duplicates = len(configs) - len(set(configs))
    if duplicates:
        raise ConfigError(f"the sweep repeats {duplicates} configuration(s); vary seeds with seeds=K, not in the grid")
    return configs


# The settings a run name (TrainConfig.run_name) spells out; the seed is a sweep child's own suffix.
NAMED = ("norm", "optimizer", "lr", "augment", "batch_size")
SUFFIX = {"weight_decay": "wd", "momentum": "m", "epochs": "e", "n": "n", "image_size": "px", "groups": "g"}


def varying(configs: Sequence[TrainConfig]) -> list[str]:
    """The settings (but the seed) whose values differ among ``configs``, in TrainConfig's order."""
    return [f for f in FIELD_TYPES if f != "seed" and len({getattr(c, f) for c in configs}) > 1]


def config_label(cfg: TrainConfig, fields: Sequence[str]) -> str:
    """A configuration by the settings that vary in its sweep, ``norm=bn, batch_size=8``: the label of
    its row in the report and its runs' ``resnorm.config`` tag (the MLflow UI groups seeds by it)."""
    return ", ".join(f"{f}={getattr(cfg, f)}" for f in fields or ["norm"])


def child_name(
    cfg: TrainConfig, seeds: int, fields: Sequence[str] = (), folders: Mapping[str, str] | None = None
) -> str:
    """The run name of a sweep child: the train run name, then each setting of ``fields`` (those that
    vary in the sweep) that the name does not spell and that differs from train's default, then
    ``-s{seed}`` when seeds vary (``seeds`` > 1). A data folder is named by its base name, or as ``folders``
    names it. ``child_names`` makes the names of a whole sweep unique."""
    default, extra = TrainConfig(), []
    for f in fields:
        value = getattr(cfg, f)
        if f in NAMED or value == getattr(default, f):
            continue
        if f == "scheduler":
            extra.append(value)  # "step"
        elif f == "data":
            extra.append((folders or {}).get(value) or os.path.basename(value.rstrip("/")) or value)
        else:
            extra.append(f"{SUFFIX.get(f, f)}{value:g}" if isinstance(value, float) else f"{SUFFIX.get(f, f)}{value}")
    name = "-".join([cfg.run_name(), *extra])
    return f"{name}-s{cfg.seed}" if seeds > 1 else name


def child_names(configs: Sequence[TrainConfig], seeds: int) -> dict[TrainConfig, str]:
    """Every child's run name (``child_name``), unique in the sweep whatever the values: two data folders
    with one base name (``/x/a/imgs``, ``/x/b/imgs``) are told apart by as many of their parent folders as
    it takes (``a/imgs``), and any names still shared (values that print alike) end in a digest of the
    configuration."""
    fields = varying(configs)
    folders = _shortest_unique_paths(sorted({c.data for c in configs})) if "data" in fields else {}
    named = {c: child_name(c, seeds, fields, folders) for c in configs}
    counts: dict[str, int] = {}
    for name in named.values():
        counts[name] = counts.get(name, 0) + 1
    return {c: f"{n}-c{_digest(c)}" if counts[n] > 1 else n for c, n in named.items()}


def _shortest_unique_paths(paths: Sequence[str]) -> dict[str, str]:
    """Each path by its fewest trailing components that no other path ends in the same way."""
    parts = {p: [x for x in p.rstrip("/").split("/") if x] or [p] for p in paths}
    out = {}
    for p, mine in parts.items():
        for k in range(1, len(mine) + 1):
            tail = mine[-k:]
            if not any(q != p and theirs[-k:] == tail for q, theirs in parts.items()):
                break
        out[p] = "/".join(tail)
    return out


def _digest(cfg: TrainConfig) -> str:
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]
