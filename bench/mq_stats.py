"""Paired comparisons for the memory-quality benchmark: per-timeline differences with bootstrap 95% intervals.

Every policy runs the same timelines with the same seeds, so each timeline gives one paired difference
(policy minus baseline). The interval is a percentile bootstrap over timelines (resampled with replacement,
seeded), so a claim "lower than flush" is made only when the whole interval lies below zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

BOOTSTRAP = 4000  # resamples; the interval's ends move by well under 0.001 between seeds at this count
STATS_SEED = 20_261_130


@dataclass(frozen=True)
class Paired:
    """Policy minus baseline over the timelines where both have a value."""

    n: int
    mean: float  # mean paired difference
    lo: float  # bootstrap 95% interval of the mean
    hi: float
    lower: int  # timelines where the policy's value is below the baseline's
    higher: int
    ties: int

    def supports(self, direction: str) -> bool:
        """Whether the interval excludes zero in `direction` ("lower" or "higher")."""
        if direction not in ("lower", "higher"):
            raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
        return self.n > 1 and (self.hi < 0 if direction == "lower" else self.lo > 0)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired(values: Sequence[float | None], baseline: Sequence[float | None], *, seed: int = STATS_SEED,
           resamples: int = BOOTSTRAP, tie: float = 1e-9) -> Paired:
    """Paired difference values - baseline (None / NaN entries are dropped pairwise)."""
    if len(values) != len(baseline):
        raise ValueError(f"values ({len(values)}) and baseline ({len(baseline)}) must hold one entry per timeline")
    d = np.array([a - b for a, b in zip(values, baseline) if _ok(a) and _ok(b)], dtype=np.float64)
    if d.size == 0:
        return Paired(0, math.nan, math.nan, math.nan, 0, 0, 0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Paired(int(d.size), float(d.mean()), float(lo), float(hi), int((d < -tie).sum()), int((d > tie).sum()),
                  int((np.abs(d) <= tie).sum()))


def _ok(v: float | None) -> bool:
    return v is not None and math.isfinite(float(v))


def claim(p: Paired, better: str) -> str:
    """Wording the interval supports, for a metric where `better` ("lower" / "higher") is better."""
    if p.n == 0:
        return "no data"
    worse = "higher" if better == "lower" else "lower"
    if p.supports(better):
        return "better"
    if p.supports(worse):
        return "worse"
    return "no difference shown"
