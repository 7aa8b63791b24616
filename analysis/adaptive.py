"""An adaptive sweep's rounds (``seeds=auto``): the looks a sweep's plan and runs allow, and, after
each round, the claims read from the runs that finished, the round logged on the parent run, and the
next round planned where a claim is still open (``analysis.sequential`` decides both)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from analysis.claims import Claim
from analysis.groups import build_groups
from analysis.runs import Plan, children, without_seed
from analysis.sequential import Design, assess, rounds_table, targets
from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep.child import Child
from resnorm.sweep.spec import SweepSpec
from resnorm.tracking import FAILED, FINISHED, KILLED

ENDED = (FINISHED, FAILED, KILLED)


def design_of(planned: Plan, runs: pd.DataFrame, sweep_ended: bool = False) -> Design:
    """How the sweep chose its seeds. An adaptive sweep's looks are its rounds, in order, that it looked at:
    every round before its last (it planned the next one after looking), and its last once that round's
    children have all ended (finished, failed or killed), or once the sweep has ended FINISHED (it looked
    and stopped). A round still under way is not looked at yet; a child missing from a round that was looked
    at (deleted since) is one of its seeds that did not finish, named in the report."""
    if not planned.adaptive:
        return Design()
    ended = {
        (cfg, int(seed)) for cfg, seed, status in zip(runs["config"], runs["seed"], runs["status"]) if status in ENDED
    }
    last = max(planned.rounds.values(), default=0)
    looks = []
    for r in range(1, last + 1):
        upto = [c for c in planned.configs if planned.rounds.get(c, 1) <= r]
        if r == last and not sweep_ended and not all((without_seed(c), c.seed) in ended for c in upto):
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
    groups = build_groups(runs, configs, plan.mode)
    claims = assess(groups, design, plan.margin)
    k = planned[-1].round
    decided = sum(c.decided for c in claims)
    log_round(client, parent_run_id, k, claims, len(planned))
    print(f"round {k}: {decided} of {len(claims)} claims decided", flush=True)
    for claim in claims:
        look, needed = f" ({claim.look})" if claim.look else "", f"; {claim.needed}" if claim.needed else ""
        print(f"  {claim.id}. {claim.verdict}{look}{needed}")
    want = targets(claims, design, plan.margin, groups)
    seeds: dict[TrainConfig, list[int]] = {}
    for c in configs:
        seeds.setdefault(without_seed(c), []).append(c.seed)
    more = []
    for cfg, have in seeds.items():  # in plan order
        first, now = min(have), len(have)
        more += [dataclasses.replace(cfg, seed=first + s) for s in range(now, want.get(cfg, 0))]
    return more


def log_round(client: MlflowClient, run_id: str, k: int, claims: Sequence[Claim], planned: int) -> None:
    """Round ``k`` on the parent, idempotent: its table (``rounds/round-{k}.json``, MLflow's table format,
    shown as a table by the UI) written whole, replacing what an earlier evaluation of the round wrote (a
    re-run evaluates the round it stopped after again; a table torn by a kill is written anew), and the
    metrics ``claims_decided`` and ``children_planned`` each given their point at step k once, together."""
    path = f"rounds/round-{k:02d}.json"
    client.log_text(run_id, rounds_table(claims).to_json(orient="split", index=False), path)
    listed = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": path, "type": "table"} not in listed:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*listed, {"path": path, "type": "table"}]))
    values = {names.CLAIMS_DECIDED: sum(c.decided for c in claims), names.CHILDREN_PLANNED: planned}
    now = int(time.time() * 1000)
    missing = [
        Metric(key, float(value), now, k)
        for key, value in values.items()
        if not any(m.step == k for m in client.get_metric_history(run_id, key))
    ]
    if missing:  # one batch: both or neither
        client.log_batch(run_id, metrics=missing)
