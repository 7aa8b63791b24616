"""A sweep's report, built once from its runs: provenance, the plan against what finished, the
tables, the figures and the study's claims. Nothing here writes a file or a run (``write``, ``publish``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.adaptive import design_of
from analysis.claims import Claim
from analysis.evidence import band
from analysis.figures import FIGURES, build_figure
from analysis.groups import UNUSABLE, Group, build_groups
from analysis.runs import Histories, Plan, check_plan, children, sweep_plan
from analysis.sequential import Design, assess
from analysis.tables import ALL_TABLE, TABLES, Table, build_table, sweep_table
from resnorm import names
from resnorm.model import depth
from resnorm.tracking import FINISHED


@dataclass(frozen=True)
class Report:
    parent: Run
    plan: Plan
    runs: pd.DataFrame  # every training run under the sweep
    groups: list[Group]
    tables: dict[str, Table]
    figures: dict[str, Figure | None]
    figure_missing: dict[str, list[str]]
    claims: list[Claim]
    margin: float  # the claims' smallest effect of interest, in accuracy (0.01: one point)
    provenance: list[tuple[str, str]]
    design: Design = Design()

    @property
    def sweep_run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def warnings(self) -> list[str]:
        """One line each: a logged plan not followed, a seed finished twice, a finished run whose scores
        cannot be used (``analyze`` prints them; the report lists them too)."""
        return [*self.plan.warnings, *left_out(self.groups)]

    @property
    def finished(self) -> int:
        return sum(g.planned_finished for g in self.groups)

    @property
    def planned(self) -> int:
        return sum(len(g.planned) for g in self.groups)


def build(client: MlflowClient, parent: Run, margin: float | None = None) -> Report:
    """The report of the sweep whose parent run is ``parent``; ``margin`` (a fraction, 0.01: one point)
    defaults to the one an adaptive sweep decided its rounds with, else one point."""
    planned = sweep_plan(client, parent)
    runs = children(client, parent, planned)
    checked = check_plan(parent, planned, runs)
    if checked is not planned:  # the logged plan left runs out: the params' plan, and its runs, instead
        planned, runs = checked, children(client, parent, checked)
    margin = margin or planned.margin or 0.01
    groups = build_groups(runs, planned.configs, planned.mode)
    design = design_of(planned, runs, parent.info.status == FINISHED)
    histories = Histories(client)
    tables = {ALL_TABLE: sweep_table(groups, histories)}
    tables.update({spec.id: build_table(spec, groups, histories) for spec in TABLES})
    figures, missing = {}, {}
    for spec in FIGURES:
        figures[spec.id], missing[spec.id] = build_figure(spec, groups, histories)
    claims = assess(groups, design, margin)
    return Report(
        parent,
        planned,
        runs,
        groups,
        tables,
        figures,
        missing,
        claims,
        margin,
        provenance(client, parent, planned, runs, groups, design, margin),
        design,
    )


def _design(planned: Plan, design: Design, margin: float, status: str) -> str:
    """How the seeds were chosen, the margin the claims are read against, and an adaptive sweep's rounds."""
    said = f"{design.describe()}; margin {band(margin)}"
    if planned.adaptive and planned.margin and abs(planned.margin - margin) > 1e-12:
        said += f" (the sweep decided its rounds at ±{round(planned.margin * 100, 9):g})"
    rounds = max(planned.rounds.values(), default=0)
    if planned.adaptive and len(design.rounds) < rounds:
        k = len(design.rounds) + 1
        said += (
            f"; round {k} of {rounds} is still under way and not looked at"
            if status == "RUNNING"
            else f"; round {k} of {rounds} did not complete (the sweep ended {status} before its children all "
            "ended) and is not looked at"
        )
    return said


def _values(groups: list[Group], name: str) -> str:
    found = sorted({str(g.value(name)) for g in groups if len(g.finished) or g.planned})
    return ", ".join(found) if found else "–"


def _datasets(client: MlflowClient, runs: pd.DataFrame) -> str:
    """Name and digest of every split the finished runs trained on (from their dataset inputs)."""
    seen = {}
    for data, run_id in zip(runs["data"], runs["run_id"]):
        if data in seen:
            continue
        inputs = client.get_run(run_id).inputs
        found = inputs.dataset_inputs if inputs is not None else []
        seen[data] = ", ".join(f"{d.dataset.name} {d.dataset.digest}" for d in found) or "not recorded"
    return "; ".join(f"{k} ({v})" for k, v in seen.items()) or "–"


def _unplanned(groups: list[Group]) -> str:
    """A warning when runs lie outside the plan (re-made from params: the preset's code changed since)."""
    outside = [g for g in groups if not g.planned]
    if not outside:
        return ""
    return f"; {len(outside)} configurations ran but are not in the sweep's plan"


def left_out(groups: list[Group]) -> list[str]:
    """Finished runs the report does not use, and why: a seed's second finished run, unusable scores."""
    lines = [line for g in groups for line in g.notices()]
    for g in groups:
        lines += [
            f"run {p['run_id']} ({g.config.run_name()} seed {p['seed']}) FINISHED, but {p['error']}: left out"
            for p in g.problems
            if p["status"] == UNUSABLE
        ]
    return lines


def provenance(
    client: MlflowClient,
    parent: Run,
    planned: Plan,
    runs: pd.DataFrame,
    groups: list[Group],
    design: Design,
    margin: float,
) -> list[tuple[str, str]]:
    """What produced the report, as (label, value) lines."""
    done = runs[runs["status"] == FINISHED]
    error = parent.data.tags.get(names.TAG_ERROR, "")
    seeds = sorted({s for g in groups for s in g.planned})
    finished, planned_seeds = sum(g.planned_finished for g in groups), sum(len(g.planned) for g in groups)

    def tags(column: str) -> str:
        return ", ".join(sorted({v for v in done[column] if v})) or "not recorded"

    return [
        (
            "sweep",
            f"{parent.info.run_name} (run {parent.info.run_id}, preset "
            f"{parent.data.tags.get(names.TAG_PRESET, '?')}), status {parent.info.status}"
            + (f": {error}" if error else ""),
        ),
        ("plan", planned.source + "".join(f"; warning: {w}" for w in planned.warnings)),
        ("design", _design(planned, design, margin, parent.info.status)),
        (
            "runs",
            f"{finished} of {planned_seeds} planned seeds finished, over {len(groups)} configurations"
            + _unplanned(groups),
        ),
        *([("left out", "; ".join(left_out(groups)))] if left_out(groups) else []),
        ("data", f"{_values(groups, 'data')}; datasets {_datasets(client, done)}"),
        ("split sizes", tags("splits")),
        ("image size", _values(groups, "image_size")),
        ("depth", ", ".join(f"{depth(int(n))} (n={n})" for n in _values(groups, "n").split(", ") if n != "–")),
        ("epochs", _values(groups, "epochs")),
        ("batch size", _values(groups, "batch_size")),
        (
            "optimiser",
            "; ".join(
                sorted(
                    {
                        f"{g.config.optimizer} lr {g.config.lr:g}, weight decay "
                        f"{g.config.weight_decay:g}, momentum {g.config.momentum:g}"
                        for g in groups
                    }
                )
            ),
        ),
        ("schedule", _values(groups, "scheduler")),
        ("augmentation", _values(groups, "augment")),
        ("seeds", ", ".join(map(str, seeds)) or "–"),
        ("device", tags("device")),
        ("training mode", f"asked {_values(groups, 'mode')}; ran {tags('speed')}"),
        ("versions", tags("versions")),
    ]
