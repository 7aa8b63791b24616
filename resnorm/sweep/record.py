"""A sweep's plan as children (their names, labels, rounds) and as its parent's ``sweep.json``: written
whole after every round is planned, and read back, checked, by a re-run (and by ``analyze``, through
``plan_problem``): a plan that does not hold together is not followed."""

from __future__ import annotations

import dataclasses
import json
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from resnorm import PROJECT_ROOT, names
from resnorm.config import TrainConfig
from resnorm.errors import ResnormError, warn
from resnorm.sweep.child import Child
from resnorm.sweep.planner import AUTO, FIRST_ROUND_SEEDS, child_names, config_label, varying
from resnorm.sweep.spec import SweepSpec


def planned_children(
    spec: SweepSpec, configs: Sequence[TrainConfig], threads_each: int, round_: int = 1
) -> list[Child]:
    """Every planned configuration as a child: its run name (unique in the sweep) and label (by the
    settings that vary in it), its launch. An adaptive sweep names its children as a sweep of many seeds."""
    fields = varying(configs)
    named = child_names(configs, 2 if spec.adaptive else spec.first_seeds)
    launch = replace(spec.launch, threads=threads_each)
    return [Child(c, named[c], launch, config_label(c, fields), round_) for c in configs]


def new_round(spec: SweepSpec, planned: list[Child], more: Sequence[TrainConfig], threads_each: int) -> list[Child]:
    """The children of an adaptive sweep's next round, named and labelled as the first round's."""
    everything = [c.config for c in planned] + list(more)
    children = planned_children(spec, everything, threads_each, planned[-1].round + 1)
    return children[len(planned) :]


def plan_record(spec: SweepSpec, children: list[Child], run_id: str, parallel: int) -> dict:
    """``sweep.json``: what the sweep plans (every configuration and seed, its name, label and round) and
    the command that re-runs it into its parent (every word quoted for a shell). ``analyze`` reports
    against it."""
    params = " ".join(f"-P {k}={shlex.quote(v)}" for k, v in spec.params(parallel).items() if v)
    record: dict[str, Any] = {
        "preset": spec.preset,
        "grid": spec.grid,
        "seeds": AUTO if spec.adaptive else spec.seeds,
        "mode": spec.launch.mode,
        "parameters": spec.params(parallel),
        "configurations": [
            {"name": c.name, "label": c.label, "config": asdict(c.config), "round": c.round} for c in children
        ],
        "command": (
            f"mlflow run {shlex.quote(str(PROJECT_ROOT))} -e sweep {params} --env-manager local "
            f"--run-id {shlex.quote(run_id)}"
        ),
    }
    if spec.adaptive:
        record["design"] = {"max_seeds": spec.max_seeds, "margin": spec.margin, "rounds": children[-1].round}
    return record


def read_plan(client: MlflowClient, run_id: str) -> Any:
    """The parent's ``sweep.json`` as it was logged (None when there is none; what JSON cannot read, as
    ``{"unreadable": why}``)."""
    if not any(f.path == names.SWEEP_PLAN for f in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, names.SWEEP_PLAN, tmp)
        try:
            return json.loads(Path(path).read_text())
        except ValueError as e:
            return {"unreadable": str(e)}


def _without_seed(cfg: TrainConfig) -> TrainConfig:
    return dataclasses.replace(cfg, seed=TrainConfig.seed)


def plan_problem(logged: Any, seeds: int | None, max_seeds: int) -> str:
    """What keeps a logged plan (any JSON: a hand-edit may have made it anything) from holding together, or
    "" when it does: readable, each configuration once, and (an adaptive sweep, ``seeds`` None) every
    configuration's seeds 3 in round 1, then one more each after, in rounds that do not go back, up to
    ``max_seeds``."""
    try:
        entries = logged["configurations"]
        configs = [TrainConfig.from_record(c["config"]) for c in entries]
        rounds = [c.get("round", 1) for c in entries]
        for c in entries:
            if not isinstance(c["name"], str):
                return f"a run name is not text: {c['name']!r}"
    except (KeyError, TypeError, AttributeError) as e:
        return f"it cannot be read: {type(e).__name__} {e}"
    except ResnormError as e:
        return f"a configuration cannot be read: {e}"
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rounds):
        return "a round is not a whole number of at least 1"
    if not configs:
        return "it plans nothing"
    twice = len(configs) - len(set(configs))
    if twice:
        return f"it lists {twice} configuration(s) twice"
    if seeds is not None:
        return ""
    by_config: dict[TrainConfig, list[tuple[int, int]]] = {}
    for c, r in zip(configs, rounds):
        by_config.setdefault(_without_seed(c), []).append((c.seed, r))
    for cfg, seeds_rounds in by_config.items():  # an adaptive sweep's rounds add seeds, in order, up to max_seeds
        ordered = sorted(seeds_rounds)
        found, start = [s for s, _ in ordered], ordered[0][0]
        first = [s for s, r in ordered if r == 1]
        if first != list(range(start, start + FIRST_ROUND_SEEDS)) or found != list(range(start, start + len(found))):
            return f"{cfg.run_name()} has seeds {found}, not {FIRST_ROUND_SEEDS} in round 1 and one more each after"
        if len(found) > max_seeds:
            return f"{cfg.run_name()} has {len(found)} seeds, more than max_seeds {max_seeds}"
        if [r for _, r in ordered] != sorted(r for _, r in ordered):
            return f"{cfg.run_name()}'s later seeds come from earlier rounds"
    return ""


def _entries(logged) -> list[tuple[TrainConfig, int]]:
    """A plan that holds together, as (configuration, round) in its order."""
    return [(TrainConfig.from_record(c["config"]), c.get("round", 1)) for c in logged["configurations"]]


def earlier_rounds(
    client: MlflowClient, run_id: str, spec: SweepSpec, first: list[Child], threads_each: int
) -> list[Child]:
    """An adaptive sweep re-run into its parent: every round the earlier attempt planned (its ``sweep.json``),
    when that plan holds together (``plan_problem``, as ``analyze`` checks it) and starts with this sweep's
    first round. Else one ``warning:`` line says why, and the sweep goes on from its first round: the later
    rounds are asked for again from the runs that finished, which keep what they trained."""
    logged = read_plan(client, run_id)
    if logged is None:
        return first
    problem = plan_problem(logged, None, spec.max_seeds)
    entries = [] if problem else _entries(logged)
    if not problem and [c for c, r in entries if r == 1] != [c.config for c in first]:
        problem = "it does not start with this sweep's first round"
    if problem:
        warn(
            f"the plan {names.SWEEP_PLAN} of sweep {run_id} does not hold together ({problem}); not followed: the "
            "sweep goes on from its first round, and asks for the later ones again"
        )
        return first
    children = list(first)
    for r in range(2, max((r for _, r in entries), default=1) + 1):
        more = [c for c, k in entries if k == r]
        if more:
            children += new_round(spec, children, more, threads_each)
    return children
