"""The study's tables, rebuilt from a sweep's configurations: one row per configuration (never
two configurations pooled), seeds finished of planned, mean ± sd, 95 % CI, groups that cannot be
told apart, and cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis import stats
from analysis.groups import Group, describe, differing
from analysis.runs import FINAL_METRICS, Histories
from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep import PRESET_SPECS

# The settings the study varies; every other TrainConfig field is the sweep's own (its budget).
STUDY_AXES = ("norm", "optimizer", "lr", "weight_decay", "augment", "batch_size", "scheduler")
STUDY_POINTS = PRESET_SPECS["study"][1]
ACCURACY = names.final_metric("test", "accuracy")
SHOWN = {
    ACCURACY: "test acc. %",
    names.final_metric("val", "accuracy"): "val acc. %",
    names.final_metric("test", "macro_f1"): "test macro-F1 %",
}


def study_setting(point: dict) -> dict:
    """A study point with the axes it leaves out at TrainConfig's defaults."""
    return {**{a: getattr(TrainConfig, a) for a in STUDY_AXES}, **point}


def points(vary: str = "", **where) -> list[dict]:
    """Study points matching ``where``; with ``vary``, only those at the defaults on every other axis."""
    out = []
    for p in STUDY_POINTS:
        s = study_setting(p)
        if any(s[k] != v for k, v in where.items()):
            continue
        if vary and any(s[a] != getattr(TrainConfig, a) for a in STUDY_AXES if a not in (vary, "norm", *where)):
            continue
        out.append(p)
    return out


@dataclass(frozen=True)
class Row:
    label: str
    where: dict  # a study point

    def selector(self) -> dict:
        return study_setting(self.where)

    def describe(self) -> str:
        """The configuration in run-name form, e.g. ``bn-sgd-lr0.1-aug-bs32``."""
        return TrainConfig(**self.selector()).run_name()


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    rows: tuple[Row, ...]


def study_rows(found: list[dict], label) -> tuple[Row, ...]:
    """A row (of a table) or series (of a figure) per study point, labelled by ``label(setting)``."""
    return tuple(Row(label(study_setting(p)), p) for p in found)


def _by_norm(s: dict) -> str:
    return s["norm"]


TABLES = (
    TableSpec(
        "table1",
        "Table 1: torch_bn, augmentation off vs on",
        study_rows(points("augment", norm="torch_bn"), lambda s: f"augmentation {'on' if s['augment'] else 'off'}"),
    ),
    TableSpec(
        "table2",
        "Table 2: torch.nn.BatchNorm2d vs the hand-written batch norm (sanity check)",
        study_rows([p for p in points("norm") if p["norm"] in ("torch_bn", "bn")], _by_norm),
    ),
    TableSpec(
        "table3",
        "Table 3: every norm at the study's default optimiser (SGD lr 0.1, augmentation on)",
        study_rows(points("norm"), _by_norm),
    ),
    TableSpec("table4", "Table 4: every norm with Adam lr 1e-4", study_rows(points(optimizer="adam"), _by_norm)),
    TableSpec("table5", "Table 5: every norm with SGD lr 1e-4", study_rows(points(optimizer="sgd", lr=1e-4), _by_norm)),
    TableSpec(
        "table6",
        "Table 6: torch_bn, cosine vs step schedule",
        study_rows(points("scheduler", norm="torch_bn"), lambda s: f"{s['scheduler']} schedule"),
    ),
)
MAIN_TABLE = "table3"
ALL_TABLE = "sweep"  # every configuration of the sweep, labelled by what varies in it


@dataclass
class TableRow:
    label: str
    group: Group
    mean: dict[str, float] = field(default_factory=dict)  # final metric -> mean over finished seeds
    std: dict[str, float] = field(default_factory=dict)  # sample std; NaN with one seed
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    letters: str = ""
    alike: bool = False  # its seeds' test accuracies are all equal: the CI shown is the binomial one

    @property
    def n(self) -> int:
        return len(self.group.finished)


@dataclass
class Table:
    spec: TableSpec
    rows: list[TableRow]
    fixed: dict  # settings every row of the table shares (its caption)
    missing: list[str] = field(default_factory=list)  # "label (config)" of rows the sweep has no run for
    tested: bool = False  # whether letters come from tests


def _test_images(group: Group) -> int | None:
    for text in group.finished.get("splits", []):
        sizes = dict(part.split("=") for part in str(text).split() if "=" in part)
        if "test" in sizes:
            return int(sizes["test"])
    return None


def score_row(label: str, group: Group, histories: Histories | None) -> TableRow:
    row = TableRow(label, group)
    if row.n == 0:
        return row
    test_images = _test_images(group)
    for key in FINAL_METRICS:
        values = [float(v) for v in group.finished[key]]
        row.mean[key] = sum(values) / len(values)
        row.std[key] = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else math.nan
        if stats.spread(values):
            row.ci[key] = stats.t_interval(values)
        elif key == ACCURACY and test_images:  # one seed, or seeds that all scored alike
            row.ci[key] = stats.binomial_interval(values[0], test_images)
            row.alike = len(values) > 1
        else:  # seeds that scored alike are not a zero-width interval
            row.ci[key] = (math.nan, math.nan)
    if histories is not None:
        row.cost = cost(group, histories)
    return row


def cost(group: Group, histories: Histories) -> dict[str, float]:
    """Median seconds per epoch and images per second over every epoch of every finished seed,
    and the median over seeds of the seconds spent up to the kept (best) epoch."""
    seconds, rates, to_best = [], [], []
    for run_id, best in zip(group.finished["run_id"], group.finished[names.BEST_EPOCH]):
        epoch_s = histories(run_id, names.EPOCH_SECONDS)
        seconds += list(epoch_s.values)
        rates += list(histories(run_id, names.IMAGES_PER_SECOND).values)
        if not pd.isna(best):
            to_best.append(float(epoch_s[epoch_s.index <= best].sum()))

    def median(v):
        return float(pd.Series(v, dtype=float).median()) if v else math.nan

    return {"epoch_seconds": median(seconds), "images_per_second": median(rates), "seconds_to_best": median(to_best)}


def rank(rows: list[TableRow]) -> bool:
    """Letters for the complete rows with at least two seeds (Welch + Holm on test accuracy);
    returns whether any test was made. Rows with failed seeds or one seed get no letter; a row whose
    seeds all scored alike is tested against none (it has no spread) and shares every letter it can."""
    testable = [r for r in rows if r.group.complete and r.n >= 2]
    if len(testable) < 2:
        return False
    samples = {r.label: [float(v) for v in r.group.finished[ACCURACY]] for r in testable}
    adjusted = stats.pairwise(samples)
    shown = stats.letters({r.label: r.mean[ACCURACY] for r in testable}, adjusted)
    for r in testable:
        r.letters = shown[r.label]
    return True


def matches(group: Group, selector: dict) -> bool:
    return all(
        math.isclose(group.value(k), v, rel_tol=1e-9) if isinstance(v, float) else group.value(k) == v
        for k, v in selector.items()
    )


def build_table(spec: TableSpec, groups: list[Group], histories: Histories | None) -> Table:
    """Rows of ``spec``: each spec row is every sweep configuration it matches, split (and
    labelled by what differs) when it matches several."""
    rows, missing, used = [], [], []
    for spec_row in spec.rows:
        found = [g for g in groups if matches(g, spec_row.selector())]
        if not found:
            missing.append(f"{spec_row.label} ({spec_row.describe()})")
        fields = differing(found)
        for g in found:
            label = spec_row.label if len(found) == 1 else f"{spec_row.label} ({describe(g, fields)})"
            rows.append(score_row(label, g, histories))
            used.append(g)
    table = Table(spec, rows, shared_settings(used), missing)
    table.tested = rank(rows)
    return table


def sweep_table(groups: list[Group], histories: Histories | None) -> Table:
    """Every configuration of the sweep, labelled by the settings that vary across it."""
    fields = differing(groups) or ["norm"]
    rows = [score_row(describe(g, fields), g, histories) for g in groups]
    spec = TableSpec(ALL_TABLE, "Every configuration of this sweep", ())
    # No letter groups here: across a whole sweep (351 pairs for the study at 3 seeds) a row can share
    # a letter with both the best and the worst, which tells a reader nothing. Tables 1-6 and the
    # claims test what the study compares.
    return Table(spec, rows, shared_settings(groups))


def shared_settings(groups: list[Group]) -> dict:
    """The settings (TrainConfig fields but the seed, and mode) equal in every group."""
    if not groups:
        return {}
    varying = set(differing(groups))
    names_ = [f for f in TrainConfig.__dataclass_fields__ if f != "seed"] + ["mode"]
    return {n: groups[0].value(n) for n in names_ if n not in varying}


def ordered(table: Table) -> list[TableRow]:
    """The ranking: complete rows by mean test accuracy (best first), then incomplete rows."""

    def key(r: TableRow):
        return (not r.group.complete, -r.mean.get(ACCURACY, -1.0))

    return sorted(table.rows, key=key)
