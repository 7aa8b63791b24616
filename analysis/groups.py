"""Configurations of a sweep: its runs grouped by everything but the seed, planned seeds against
finished ones, and what became of every seed that did not finish."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from analysis.runs import without_seed
from resnorm.config import TrainConfig
from resnorm.tracking import FINISHED


@dataclass
class Group:
    """One configuration (every training setting but the seed, and the training mode)."""

    config: TrainConfig  # seed left at its default: see runs.without_seed
    mode: str
    planned: tuple[int, ...] = ()  # seeds the sweep's plan has for it
    finished: pd.DataFrame = field(default_factory=pd.DataFrame)  # one FINISHED run per seed (the latest)
    problems: list[dict] = field(default_factory=list)  # seed, status, run_id, error of seeds not finished

    @property
    def complete(self) -> bool:
        return not self.problems and len(self.finished) > 0

    def seeds_text(self) -> str:
        return f"{len(self.finished)}/{len(self.planned) or len(self.finished)}"

    def value(self, name: str):
        return self.mode if name == "mode" else getattr(self.config, name)


def _seed_runs(runs: pd.DataFrame, seed: int) -> tuple[pd.Series | None, pd.Series | None]:
    """The latest finished run of ``seed`` and the latest run of it (any status)."""
    mine = runs[runs["seed"] == seed]
    if mine.empty:
        return None, None
    done = mine[mine["status"] == FINISHED]
    return (done.iloc[-1] if len(done) else None), mine.iloc[-1]


def build_group(config: TrainConfig, mode: str, planned: tuple[int, ...], runs: pd.DataFrame) -> Group:
    """``runs``: this configuration's runs in start order."""
    extra = sorted(set(runs["seed"]) - set(planned)) if len(runs) else []
    finished, problems = [], []
    for seed in (*planned, *extra):
        done, latest = _seed_runs(runs, seed) if len(runs) else (None, None)
        if done is not None:
            finished.append(done)
        elif latest is not None:
            problems.append(
                {
                    "seed": seed,
                    "status": latest["status"],
                    "run_id": latest["run_id"],
                    "error": latest["error"] or "no resnorm.error tag",
                }
            )
        else:
            problems.append({"seed": seed, "status": "MISSING", "run_id": "", "error": "no run was started"})
    frame = pd.DataFrame(finished).reset_index(drop=True) if finished else runs.iloc[0:0]
    return Group(config, mode, tuple(planned), frame, problems)


def build_groups(runs: pd.DataFrame, planned: list[TrainConfig], mode: str) -> list[Group]:
    """Every configuration the sweep planned (in plan order), then any it ran without planning."""
    seeds: dict[tuple[TrainConfig, str], list[int]] = {}
    for cfg in planned:
        seeds.setdefault((without_seed(cfg), mode), []).append(cfg.seed)
    for cfg, run_mode in zip(runs["config"], runs["mode"]):
        seeds.setdefault((cfg, run_mode), [])
    groups = []
    for (cfg, run_mode), planned_seeds in seeds.items():
        mine = runs[runs["config"].map(cfg.__eq__) & (runs["mode"] == run_mode)] if len(runs) else runs
        groups.append(build_group(cfg, run_mode, tuple(planned_seeds), mine))
    return groups


def differing(groups: list[Group]) -> list[str]:
    """The settings (TrainConfig fields but the seed, then mode) whose values differ among ``groups``."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"] + ["mode"]
    return [n for n in names if len({repr(g.value(n)) for g in groups}) > 1]


def describe(group: Group, fields: list[str]) -> str:
    return ", ".join(f"{n}={group.value(n)}" for n in fields)
