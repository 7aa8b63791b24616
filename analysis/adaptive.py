"""An adaptive sweep's rounds (``seeds=auto``): the looks a sweep's plan and runs allow, and, after
each round, the claims read from the runs that finished, the round logged on the parent run, and the
next round planned where a claim is still open (``analysis.sequential`` decides both)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.groups import build_groups
from analysis.runs import Plan, children, without_seed
from analysis.sequential import Design, assess, rounds_table, targets
from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep.child import Child
from resnorm.sweep.runner import SweepSpec
from resnorm.tracking import FAILED, FINISHED, KILLED

ENDED = (FINISHED, FAILED, KILLED)


def design_of(planned: Plan, runs: pd.DataFrame) -> Design:
    """How the sweep chose its seeds. An adaptive sweep's looks are its rounds whose children have all
    ended (finished, failed or killed: none running, none waiting), in order: a round still under way
    is not looked at yet."""
    if not planned.adaptive:
        return Design()
    ended = {
        (cfg, int(seed)) for cfg, seed, status in zip(runs["config"], runs["seed"], runs["status"]) if status in ENDED
    }
    looks = []
    for r in range(1, max(planned.rounds.values(), default=0) + 1):
        upto = [c for c in planned.configs if planned.rounds.get(c, 1) <= r]
        if not all((without_seed(c), c.seed) in ended for c in upto):
            break
        seeds: dict[TrainConfig, set[int]] = {}
        for c in upto:
            seeds.setdefault(without_seed(c), set()).add(c.seed)
        looks.append({cfg: frozenset(s) for cfg, s in seeds.items()})
    return Design(planned.max_seeds, tuple(looks))


def next_round(
    client: MlflowClient, parent_run_id: str, planned: Sequence[Child], spec: SweepSpec
) -> list[TrainConfig]:
    """After a round whose children all finished: read the claims (``analysis.sequential.assess``), log the
    round on the parent (``rounds/round-{k}.json``: each claim's verdict, effect, seeds and what would decide
    it; metric ``claims_decided`` at step k), and return the next round's configurations (more seeds of
    those an open claim compares), none when every claim is decided or none could be with max_seeds."""
    parent = client.get_run(parent_run_id)
    configs = [c.config for c in planned]
    plan = Plan(
        configs,
        {c.name: c.config for c in planned},
        spec.launch.mode,
        names.SWEEP_PLAN,
        {c.config: c.round for c in planned},
        spec.max_seeds,
        spec.margin / 100,
    )
    runs = children(client, parent, plan)
    design = design_of(plan, runs)
    claims = assess(build_groups(runs, configs, plan.mode), design, plan.margin)
    k = planned[-1].round
    client.log_table(parent_run_id, data=rounds_table(claims), artifact_file=f"rounds/round-{k:02d}.json")
    decided = sum(c.decided for c in claims)
    if not any(m.step == k for m in client.get_metric_history(parent_run_id, names.CLAIMS_DECIDED)):
        # once per round: a sweep stopped after this, and re-run, reads the same round again
        client.log_metric(parent_run_id, names.CLAIMS_DECIDED, decided, step=k)
        client.log_metric(parent_run_id, names.CHILDREN_PLANNED, len(planned), step=k)
    print(f"round {k}: {decided} of {len(claims)} claims decided", flush=True)
    for c in claims:
        print(f"  {c.id}. {c.verdict}" + (f" ({c.look})" if c.look else "") + (f"; {c.needed}" if c.needed else ""))
    want = targets(claims, design, plan.margin)
    seeds: dict[TrainConfig, list[int]] = {}
    for c in configs:
        seeds.setdefault(without_seed(c), []).append(c.seed)
    more = []
    for cfg, have in seeds.items():  # in plan order
        first, now = min(have), len(have)
        more += [dataclasses.replace(cfg, seed=first + s) for s in range(now, want.get(cfg, 0))]
    return more
