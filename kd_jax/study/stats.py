"""Statistics over seeds: mean ± std with a t confidence interval, paired
comparisons (same seeds) with their p-values, Holm's correction.

Pure functions of lists of numbers; `report.py` applies them to a study.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as sps


@dataclasses.dataclass(frozen=True)
class Summary:
  n: int
  mean: float
  std: float  # sample standard deviation (ddof=1); nan for n < 2
  ci_low: float  # t interval for the mean; nan for n < 2
  ci_high: float


def summarize(values, confidence: float = 0.95) -> Summary:
  x = np.asarray(values, np.float64)
  n = int(x.size)
  if n == 0:
    nan = float("nan")
    return Summary(0, nan, nan, nan, nan)
  mean = float(x.mean())
  if n < 2:
    return Summary(n, mean, float("nan"), float("nan"), float("nan"))
  std = float(x.std(ddof=1))
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
  return Summary(n, mean, std, mean - half, mean + half)


@dataclasses.dataclass(frozen=True)
class Paired:
  n: int  # number of pairs (seeds present on both sides)
  mean_a: float
  mean_b: float
  diff: float  # mean of a - b
  ci_low: float  # t interval of the mean difference
  ci_high: float
  t: float
  p: float  # two-sided paired t-test; nan for n < 2 or zero variance


def paired(a_by_seed: dict, b_by_seed: dict, confidence: float = 0.95) -> Paired:
  """Paired t-test of a vs b over the seeds both have."""
  seeds = sorted(set(a_by_seed) & set(b_by_seed))
  a = np.array([a_by_seed[s] for s in seeds], np.float64)
  b = np.array([b_by_seed[s] for s in seeds], np.float64)
  d = summarize(a - b, confidence)
  nan = float("nan")
  if len(seeds) < 2 or not np.any(a - b != (a - b)[0]):
    # n < 2, or every difference equal (the t statistic is undefined).
    t = p = nan
  else:
    res = sps.ttest_rel(a, b)
    t, p = float(res.statistic), float(res.pvalue)
  return Paired(len(seeds), float(a.mean()) if seeds else nan,
                float(b.mean()) if seeds else nan, d.mean, d.ci_low, d.ci_high,
                t, p)


def holm(pvalues) -> list[float]:
  """Holm-Bonferroni adjusted p-values (nan entries stay nan and do not count)."""
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(~np.isnan(p))
  out = np.full(p.shape, np.nan)
  m = len(ok)
  running = 0.0
  for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out.tolist()


def significance(p: float, level: float = 0.05) -> str:
  """'yes' (p < level), 'n.s.' (not significant), or 'n/a' (no test)."""
  if p is None or math.isnan(p):
    return "n/a"
  return "yes" if p < level else "n.s."
