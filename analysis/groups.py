"""Configurations of a sweep: its runs grouped by everything but the seed, planned seeds against
finished ones, and what became of every seed that did not finish."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from analysis.runs import unusable, without_seed
from resnorm.config import TrainConfig
from resnorm.tracking import FINISHED

UNUSABLE = "FINISHED, unusable"  # a seed whose finished run has scores that are not scores


@dataclass
class Group:
    """One configuration (every training setting but the seed, and the training mode)."""

    config: TrainConfig  # seed left at its default: see runs.without_seed
    mode: str
    planned: tuple[int, ...] = ()  # seeds the sweep's plan has for it
    finished: pd.DataFrame = field(default_factory=pd.DataFrame)  # one FINISHED run per seed (the latest)
    problems: list[dict] = field(default_factory=list)  # seed, status, run_id, error of seeds not finished
    duplicates: list[dict] = field(default_factory=list)  # seed, run_id used, others: seeds finished twice

    def notices(self) -> list[str]:
        """One line per seed that has more than one finished run: which is used, which are left out."""
        return [
            f"{self.config.run_name()} seed {d['seed']} has {len(d['others']) + 1} FINISHED runs: run {d['run_id']} "
            f"(the first to finish) is used, {', '.join(d['others'])} left out"
            for d in self.duplicates
        ]

    @property
    def complete(self) -> bool:
        return not self.problems and len(self.finished) > 0

    @property
    def planned_finished(self) -> int:
        """Finished seeds that the plan has (a run outside the plan is never counted as one of them)."""
        return int(self.finished["seed"].isin(self.planned).sum()) if len(self.finished) else 0

    def seeds_text(self) -> str:
        """finished/planned; seeds that ran outside the plan are said apart."""
        if not self.planned:
            return f"{len(self.finished)} (not planned)"
        extra = len(self.finished) - self.planned_finished
        return f"{self.planned_finished}/{len(self.planned)}" + (f" (+{extra} not planned)" if extra else "")

    def value(self, name: str):
        return self.mode if name == "mode" else getattr(self.config, name)


def _seed_runs(runs: pd.DataFrame, seed: int) -> tuple[pd.Series | None, pd.Series | None, list[str]]:
    """The earliest finished run of ``seed`` whose scores can be used, the latest run of it (any status),
    and the other usable finished runs of it (duplicates: left out, and named)."""
    mine = runs[runs["seed"] == seed]
    if mine.empty:
        return None, None, []
    finished = mine[mine["status"] == FINISHED]
    done = finished[[not unusable(row) for _, row in finished.iterrows()]]
    if not len(done):
        return None, mine.iloc[-1], []
    return done.iloc[0], mine.iloc[-1], list(done["run_id"][1:])


def _problem(seed: int, latest: pd.Series | None) -> dict:
    """What became of a seed with no usable finished run."""
    if latest is None:
        return {"seed": seed, "status": "MISSING", "run_id": "", "error": "no run was started"}
    if latest["status"] == FINISHED:  # its scores are not scores: named, never averaged in
        why = f"its scores cannot be used ({unusable(latest)})"
        return {"seed": seed, "status": UNUSABLE, "run_id": latest["run_id"], "error": why}
    error = latest["error"] or "no resnorm.error tag"
    return {"seed": seed, "status": latest["status"], "run_id": latest["run_id"], "error": error}


def build_group(config: TrainConfig, mode: str, planned: tuple[int, ...], runs: pd.DataFrame) -> Group:
    """``runs``: this configuration's runs in start order."""
    extra = sorted(set(runs["seed"]) - set(planned)) if len(runs) else []
    finished, problems, duplicates = [], [], []
    for seed in (*planned, *extra):
        done, latest, others = _seed_runs(runs, seed) if len(runs) else (None, None, [])
        if done is not None:
            finished.append(done)
            duplicates += [{"seed": seed, "run_id": done["run_id"], "others": others}] if others else []
        else:
            problems.append(_problem(seed, latest))
    frame = pd.DataFrame(finished).reset_index(drop=True) if finished else runs.iloc[0:0]
    return Group(config, mode, tuple(planned), frame, problems, duplicates)


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
