"""The report's GradCAM grid: the same test images explained by each norm's best run of the sweep."""

from __future__ import annotations

import pandas as pd

from analysis.report import Report
from analysis.tables import MAIN_TABLE
from analysis.write import Gradcam
from resnorm import names
from resnorm.errors import ResnormError
from resnorm.explain import explain
from resnorm.norms import NORM_NAMES


def gradcam_of_champions(report: Report) -> Gradcam:
    """GradCAM of each norm's best (validation accuracy) finished run among Table 3's rows."""
    frames = [r.group.finished for r in report.tables[MAIN_TABLE].rows if r.n]
    if not frames:
        return Gradcam(None, "No GradCAM grid: the sweep has no finished Table 3 run.")
    chosen = pd.concat(frames, ignore_index=True)
    best = chosen.loc[chosen.groupby("norm")[names.final_metric("val", "accuracy")].idxmax()]
    by_norm = dict(zip(best["norm"], best["run_id"]))
    try:
        result = explain([f"runs:/{by_norm[n]}" for n in NORM_NAMES if n in by_norm])
    except ResnormError as e:
        return Gradcam(None, f"No GradCAM grid: {e}")
    runs_text = ", ".join(f"{n} ({by_norm[n][:8]})" for n in NORM_NAMES if n in by_norm)
    return Gradcam(result.figure, f"Each norm's best Table 3 run of this sweep: {runs_text}.")
