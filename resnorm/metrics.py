"""Classification metrics of the study, computed by scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, f1_score


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, micro-F1 and macro-F1 as fractions in [0, 1].

    For single-label classes micro-F1 equals accuracy; the study reports both. Macro-F1 averages
    over every class that occurs in ``y_true`` or ``y_pred``.
    """
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro")),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Precision, recall, F1 and support of every class (scikit-learn's classification_report)."""
    return classification_report(
        y_true, y_pred, labels=np.arange(len(classes)), target_names=list(classes), output_dict=True, zero_division=0
    )
