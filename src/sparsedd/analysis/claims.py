"""The paper's six claims as tests: one measure per seed, a t-interval over seeds, a verdict.

Every claim reduces a set of runs (and analyses of them) to one number per seed, the *measure*;
its mean over seeds gets a two-sided Student t confidence interval (95% unless said otherwise):
mean +- t_{1 - alpha/2, n - 1} * sd / sqrt(n), sd the sample standard deviation. A t-interval, not
a bootstrap: with 2 to 5 seeds the percentile bootstrap has too few distinct resamples and covers
far less than its nominal level, while the t-interval is exact for normal per-seed measures.
Seeds pair up across runs (seed s of one run and seed s of another share their init seed and data
order), so a difference between two runs is taken per seed first.

Verdict (the threshold never moves with the data): a test ``> c`` holds when the whole interval
lies above c, does not hold when it lies below c, and is inconclusive when it contains c (or when
fewer than three seeds give a value: two identical values would make a zero-width interval);
``< c`` mirrors it; ``within (a, b)`` holds when the interval
lies inside (a, b), does not hold when it lies entirely outside, inconclusive otherwise. A claim
of several parts combines them: ``all`` holds when every part holds and does not hold when one
part does not; ``any`` holds when one part holds and does not hold when every part does not.

The claims, their measures and run sets are listed in docs/results/claims.md; each is one function
registered in :data:`CLAIMS`, taking an :class:`Evidence` (curves and analyses by run role).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import pandas as pd

from ..registry import Registry
from .stats import CONFIDENCE, spearman, t_interval

STRONG = 0.5  # |Spearman rho| from which a correlation counts as strong (Cohen's "large")
TRAIN_FULL = 0.99  # train accuracy on the noisy labels below which the network no longer interpolates
REINIT_LEVELS = 8  # the reinit analysis runs on at most this many pruned levels, evenly spaced
MIN_SEEDS = 3  # fewer values than this: the interval is shown, the verdict is inconclusive


# --- statistics -------------------------------------------------------------------------------
# (the t interval and Spearman's rho are scipy's, through .stats; the verdict is the claims' own)

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"


def verdict(lo: float, hi: float, test: str, threshold: Any) -> str:
    """holds / does not hold / inconclusive for the interval [lo, hi] under ``test`` (>, <, within)."""
    if math.isnan(lo) or math.isnan(hi):
        return OPEN
    if test == ">":
        return HOLDS if lo > threshold else FAILS if hi < threshold else OPEN
    if test == "<":
        return HOLDS if hi < threshold else FAILS if lo > threshold else OPEN
    a, b = threshold
    return HOLDS if a < lo and hi < b else FAILS if hi < a or lo > b else OPEN


def combine(verdicts: Sequence[str], mode: str = "all") -> str:
    if mode == "all":
        return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else OPEN
    return HOLDS if HOLDS in verdicts else FAILS if all(v == FAILS for v in verdicts) else OPEN


# --- claim results ----------------------------------------------------------------------------

@dataclass
class Part:
    """One measure of a claim: its per-seed values, their interval, the test and its verdict."""

    measure: str
    per_seed: list[float]
    test: str  # ">", "<" or "within"
    threshold: Any  # a number, or (a, b) for "within"
    confidence: float = CONFIDENCE
    where: dict[str, Any] = field(default_factory=dict)  # which setting or level (for the reader)

    def __post_init__(self) -> None:
        self.value, self.lo, self.hi = t_interval(self.per_seed, self.confidence)
        n = sum(1 for v in self.per_seed if not math.isnan(v))
        self.verdict = verdict(self.lo, self.hi, self.test, self.threshold) if n >= MIN_SEEDS else OPEN

    def test_text(self) -> str:
        if self.test == "within":
            return f"in ({self.threshold[0]:g}, {self.threshold[1]:g})"
        return f"{self.test} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, **self.where, "per_seed": [_num(v) for v in self.per_seed],
                "value": _num(self.value), "ci": [_num(self.lo), _num(self.hi)],
                "confidence": self.confidence, "threshold": _threshold(self.threshold), "test": self.test_text(),
                "verdict": self.verdict}


@dataclass
class Outcome:
    """What a claim function returns: its parts and how they combine into one row."""

    parts: list[Part]
    mode: str = "all"  # all | any
    headline: str = "first"  # first: the row shows the first part; envelope: min (all) or max (any) over parts
    measure: str = ""  # the row's measure when headline is envelope

    def row(self) -> dict[str, Any]:
        first = self.parts[0]
        if self.headline == "envelope":
            pick = min if self.mode == "all" else max
            value, lo, hi = (_pick(pick, [getattr(p, k) for p in self.parts]) for k in ("value", "lo", "hi"))
            measure = self.measure
        else:
            value, lo, hi, measure = first.value, first.lo, first.hi, first.measure
        return {"measure": measure, "value": _num(value), "ci": [_num(lo), _num(hi)],
                "threshold": _threshold(first.threshold), "test": first.test_text(),
                "verdict": combine([p.verdict for p in self.parts], self.mode),
                "combine": self.mode, "parts": [p.to_dict() for p in self.parts]}


def _pick(fn: Callable, values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return fn(ok) if len(ok) == len(values) else math.nan


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


def _threshold(t: Any) -> Any:
    return list(t) if isinstance(t, (tuple, list)) else t


# --- what a claim reads -----------------------------------------------------------------------

class Evidence(Protocol):
    """Curves and analyses by run role (base, noise, method, retrain, data, and ticket: the weight-rewind
    run among base and retrain); sparsedd.claims.StoreEvidence reads them from the store."""

    def curve(self, role: str) -> pd.DataFrame: ...  # per seed and level: sparsity, test_acc, train_acc_noisy, distance

    def label(self, role: str) -> str: ...  # what sets the run apart, e.g. "data.noise=0.6"

    def analysis(self, role: str, kind: str, settings: dict[str, Any], levels: list[int]) -> pd.DataFrame: ...
    # rows per seed and level: level_test_acc and the analysis's result fields

    def train_config(self, role: str) -> Any: ...  # the run's TrainConfig (None where not known: synthetic curves)


@dataclass(frozen=True)
class Claim:
    text: str
    roles: tuple[str, ...]  # the runs it reads
    measure: Callable[[Evidence], Outcome]


CLAIMS: Registry[Claim] = Registry("claim")


# --- curve measures (one seed's curve in, one number out) --------------------------------------

def log_density(sparsity: float) -> float:
    """Pruning depth as decades of density: log10(1 / (1 - sparsity)); 0 dense, 1 at 90%, 2 at 99%."""
    return -math.log10(max(1.0 - float(sparsity), 1e-12))


def dd_margin(test_acc: Sequence[float]) -> float:
    """The largest m such that the curve falls m below the dense accuracy, later rises m above it at a
    peak w, and ends m below that peak: max over 2 <= w < L of min(a_0 - min(a_1..a_{w-1}), a_w - a_0,
    a_w - a_L). Positive exactly when the three phases (dip below dense, rise above it, fall from the
    peak) are all there. The collapse is a fall from the peak, not below dense: the paper's own Fig. 1
    ends at 86.5%, below its 95.4% peak and above its 83.4% dense network."""
    a = [float(v) for v in test_acc]
    if len(a) < 4:
        return math.nan
    return max(min(a[0] - min(a[1:w]), a[w] - a[0], a[w] - a[-1]) for w in range(2, len(a) - 1))


def sweet_spot(curve: pd.DataFrame) -> pd.Series:
    """The best pruned level (largest test accuracy among levels >= 1) of one seed's curve."""
    pruned = curve[curve["level"] >= 1]
    return pruned.loc[pruned["test_acc"].idxmax()]


def sweet_position(curve: pd.DataFrame) -> float:
    """Where the sweet spot lies, in decades of density: the vertex of the parabola through the best
    pruned level and its two neighbours (kept between them), so that the position is not rounded to
    a level; the level itself when it is the last or the parabola does not open downwards."""
    c = curve.sort_values("level").reset_index(drop=True)
    w = int(sweet_spot(c).name)
    x = [log_density(v) for v in c["sparsity"]]
    if w + 1 >= len(c):
        return x[w]
    (x1, x2, x3), (a1, a2, a3) = x[w - 1:w + 2], c["test_acc"].iloc[w - 1:w + 2].tolist()
    den = (x2 - x1) * (a2 - a3) - (x2 - x3) * (a2 - a1)
    if den <= 0:
        return x2
    return min(max(x2 - 0.5 * ((x2 - x1) ** 2 * (a2 - a3) - (x2 - x3) ** 2 * (a2 - a1)) / den, x1), x3)


def interpolation_threshold(curve: pd.DataFrame, full: float = TRAIN_FULL) -> float:
    """Where train accuracy on the noisy labels first falls below ``full``, in decades of density,
    linearly interpolated between the two levels around the crossing; NaN if it never does."""
    c = curve.sort_values("level")
    x = [log_density(s) for s in c["sparsity"]]
    t = c["train_acc_noisy"].tolist()
    for i, v in enumerate(t):
        if v < full:
            if i == 0:
                return 0.0
            return x[i - 1] + (t[i - 1] - full) / (t[i - 1] - v) * (x[i] - x[i - 1])
    return math.nan


def per_seed(curve: pd.DataFrame, fn: Callable[[pd.DataFrame], float]) -> dict[int, float]:
    return {int(s): float(fn(g.sort_values("level"))) for s, g in curve.groupby("seed")}


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b per seed, over the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def mean_sweet_level(curve: pd.DataFrame) -> int:
    mean = curve.groupby("level")["test_acc"].mean().reset_index()
    return int(sweet_spot(mean)["level"])


def reinit_levels(curve: pd.DataFrame, most: int = REINIT_LEVELS) -> list[int]:
    """At most ``most`` pruned levels, evenly spaced from level 1 to the last (both included)."""
    last = int(curve["level"].max())
    if last <= most:
        return list(range(1, last + 1))
    return sorted({round(1 + i * (last - 1) / (most - 1)) for i in range(most)})


# --- the claims -------------------------------------------------------------------------------

def claim(number: int, text: str, roles: tuple[str, ...]) -> Callable:
    """Register a claim function under its number (a decorator)."""
    def register(fn: Callable[[Evidence], Outcome]) -> Callable[[Evidence], Outcome]:
        CLAIMS.register(str(number), Claim(text, roles, fn))
        return fn
    return register


@claim(1, "Sparse double descent exists across settings: test accuracy falls below the dense network's, rises "
          "above it, then collapses, across noise rates, pruning methods and retraining modes.",
       ("base", "noise", "method", "retrain"))
def claim1(ev: Evidence) -> Outcome:
    parts = [Part("double-descent margin (pp)", list(per_seed(ev.curve(r), lambda g: 100 * dd_margin(g["test_acc"])
                                                               ).values()), ">", 0.0, where={"setting": ev.label(r)})
             for r in CLAIMS["1"].roles]
    return Outcome(parts, "all", "envelope", "smallest mean double-descent margin over the settings (pp)")


@claim(2, "Heavier label noise moves the sweet spot to higher sparsity and raises its gain over the dense network.",
       ("base", "noise"))
def claim2(ev: Evidence) -> Outcome:
    lo, hi = ev.curve("base"), ev.curve("noise")
    gain = lambda g: 100 * (sweet_spot(g)["test_acc"] - g["test_acc"].iloc[0])  # noqa: E731
    pair = {"setting": f"{ev.label('noise')} against {ev.label('base')}"}
    return Outcome([
        Part("sweet-spot shift to higher sparsity with heavier noise (decades of density)",
             paired(per_seed(hi, sweet_position), per_seed(lo, sweet_position)), ">", 0.0, where=pair),
        Part("sweet-spot gain over dense, heavier minus lighter noise (pp)",
             paired(per_seed(hi, gain), per_seed(lo, gain)), ">", 0.0, where=pair)])


@claim(3, "More complex data (proxy: a larger training set, same task and noise) moves the interpolation "
          "threshold to lower sparsity.", ("base", "data"))
def claim3(ev: Evidence) -> Outcome:
    small, full = ev.curve("data"), ev.curve("base")
    shift = paired(per_seed(small, interpolation_threshold), per_seed(full, interpolation_threshold))
    return Outcome([Part("interpolation threshold, smaller minus larger training set (decades of density)",
                         shift, ">", 0.0, where={"setting": f"{ev.label('base')} against {ev.label('data')}"})])


@claim(4, "Re-dense training does not generalize as well as the sparse network at the sweet spot.", ("base",))
def claim4(ev: Evidence) -> Outcome:
    from .kinds.redense import code_settings

    level = mean_sweet_level(ev.curve("base"))  # re-dense as the paper's code does it after this run's schedule
    rows = ev.analysis("base", "redense", code_settings(ev.train_config("base")), [level]).sort_values("seed")
    diff = (100 * (rows["level_test_acc"] - rows["test_acc"])).tolist()
    return Outcome([Part("sparse minus re-dense test accuracy at the sweet spot (pp)", diff, ">", 0.0,
                         where={"level": level})])


SHARPNESS = {"subsample": 2048, "iters": 50, "trace_samples": 1}  # the top Hessian eigenvalue on 2,048 examples


@claim(5, "Learning distance follows the double descent (strong negative correlation with test accuracy); "
          "sharpness does not (weak correlation).", ("base",))
def claim5(ev: Evidence) -> Outcome:
    curve = ev.curve("base")
    dist = per_seed(curve, lambda g: spearman(g["test_acc"], g["distance"]))
    sharp = ev.analysis("base", "sharpness", SHARPNESS, sorted(int(v) for v in curve["level"].unique()))
    sharp = sharp.rename(columns={"level_test_acc": "test_acc"})
    rho = per_seed(sharp, lambda g: spearman(g["test_acc"], g["top_eigenvalue"]))
    return Outcome([Part("Spearman rho of test accuracy and learning distance over levels", list(dist.values()),
                         "<", -STRONG),
                    Part("Spearman rho of test accuracy and sharpness (top Hessian eigenvalue) over levels",
                         list(rho.values()), "within", (-STRONG, STRONG))])


@claim(6, "A random reinitialization with the same mask beats the winning ticket at some sparsity.", ("ticket",))
def claim6(ev: Evidence) -> Outcome:
    curve = ev.curve("ticket")
    levels = reinit_levels(curve)
    rows = ev.analysis("ticket", "reinit", {}, levels)
    conf = 1 - (1 - CONFIDENCE) / len(levels)  # Bonferroni over the levels: "at some sparsity"
    parts = []
    for level in levels:
        g = rows[rows["level"] == level].sort_values("seed")
        sparsity = float(curve[curve["level"] == level]["sparsity"].mean())
        parts.append(Part("reinit minus winning-ticket test accuracy (pp)",
                          (100 * (g["reinit_test_acc"] - g["ticket_test_acc"])).tolist(), ">", 0.0, conf,
                          where={"level": level, "sparsity": round(sparsity, 6)}))
    return Outcome(parts, "any", "envelope", f"largest mean reinit minus ticket test accuracy over {len(levels)} "
                                              f"levels (pp; {100 * conf:.2f}% intervals, Bonferroni)")
