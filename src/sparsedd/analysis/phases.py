"""Locate the four phases of sparse double descent on an accuracy-sparsity curve.

The rule (accuracies are fractions; ``tol`` is the smallest change taken as real, default 0.01):

1. dense: level 0.
2. For every candidate level c >= 1, its rebound is max_{j > c} acc_j - acc_c. The sweet spot w is
   the maximum after the candidate with the largest rebound among those with a dip
   acc_0 - acc_c >= tol; the critical point c is then the minimum of acc over levels 1..w-1.
   A double descent is reported only if the dip (acc_0 - acc_c) and the rebound (acc_w - acc_c)
   are both at least ``tol``; otherwise ``found`` is False with the reason, and no phase is invented.
3. light: levels 0..l, the longest prefix (before c) whose accuracy stays within ``tol`` below dense.
4. collapsed: from the first level k > w after which every accuracy stays below acc_w - tol (the
   end of the sweet plateau), provided the curve ends below acc_w - tol (a fall from the peak, which
   may end above the dense accuracy, as the paper's Fig. 1 does); none otherwise.
5. Also reported: the first level where train accuracy on the noisy labels drops below
   ``train_full`` (default 0.99), which the paper ties to the critical point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass
class Point:
    level: int
    sparsity: float
    acc: float


@dataclass
class Phases:
    found: bool
    reason: str
    dense: Point
    light_end: Point | None = None
    critical: Point | None = None
    sweet: Point | None = None
    collapse: Point | None = None
    train_leaves_full: Point | None = None
    sweet_above_dense: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(sparsity: Sequence[float], test_acc: Sequence[float], train_acc: Sequence[float] | None = None, *,
           tol: float = 0.01, train_full: float = 0.99, levels: Sequence[int] | None = None) -> Phases:
    """The phases of a curve given in level order; ``levels`` numbers its points (default 0, 1, ...), so that a
    curve with levels left out (unfinished, or dropped as unstable) reports the levels' own numbers."""
    a = [float(v) for v in test_acc]
    s = [float(v) for v in sparsity]
    number = [int(v) for v in levels] if levels is not None else list(range(len(a)))
    if len(a) != len(s) or len(a) != len(number) or len(a) < 3:
        raise ValueError("a curve needs at least 3 levels with one sparsity (and level number) per accuracy")
    pt = lambda i: Point(number[i], s[i], a[i])  # noqa: E731
    leaves = None
    if train_acc is not None:
        below = [i for i, t in enumerate(train_acc) if float(t) < train_full]
        leaves = Point(number[below[0]], s[below[0]], float(train_acc[below[0]])) if below else None
    dips = [c for c in range(1, len(a) - 1) if a[0] - a[c] >= tol]
    if not dips:
        return Phases(False, f"no level falls {tol:g} below the dense accuracy before the last level",
                      pt(0), train_leaves_full=leaves)
    best_c = max(dips, key=lambda c: (max(a[c + 1:]) - a[c], -c))
    if max(a[best_c + 1:]) - a[best_c] < tol:
        return Phases(False, f"the accuracy falls but never rises {tol:g} again", pt(0), train_leaves_full=leaves)
    w = max(range(best_c + 1, len(a)), key=lambda j: (a[j], -j))
    c = min(range(1, w), key=lambda i: (a[i], i))
    light = 0
    while light + 1 < c and a[light + 1] >= a[0] - tol:
        light += 1
    collapse = None
    if a[-1] < a[w] - tol:
        collapse = next(k for k in range(w + 1, len(a)) if all(v < a[w] - tol for v in a[k:]))
    return Phases(True, "dip, rise" + (" and collapse" if collapse is not None else "; collapse not reached"),
                  pt(0), pt(light), pt(c), pt(w), pt(collapse) if collapse is not None else None, leaves,
                  a[w] > a[0], {"dip": a[0] - a[c], "rise": a[w] - a[c]})
