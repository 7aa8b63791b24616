"""Click option types the entry points share, for values that pass a plain type check and make no
sense: ``float("nan")`` is a float, and ``click.FloatRange`` lets it through (every comparison with
NaN is false). Refused here, at the boundary, as one line that names the value and what is allowed
(exit 2), instead of deep inside the job in its own units.
"""

from __future__ import annotations

import math

import click


class FiniteRange(click.FloatRange):
    """A finite number from ``low`` to ``high`` (both included), in ``unit``: ``click.FloatRange``
    (its help shows the range) that also refuses NaN and infinities, saying what is allowed."""

    def __init__(self, low: float, high: float, unit: str) -> None:
        super().__init__(low, high)
        self.low, self.high, self.unit = low, high, unit

    @property
    def allowed(self) -> str:
        """What is allowed, in words: ``a finite number from 0.01 to 50 (accuracy points)``."""
        return f"a finite number from {self.low:g} to {self.high:g} ({self.unit})"

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and self.low <= number <= self.high):
            text = value if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
            self.fail(f"{text!r} is not {self.allowed}", param, ctx)
        return number


# A margin (the smallest effect of interest) in accuracy points: below 0.01 a report shows it as
# "±0 points" and no interval could lie inside it; beyond 50 every difference is "no effect".
MARGIN_POINTS = FiniteRange(0.01, 50, "accuracy points")
