"""`sparsedd claims`: the interval code against reference values, each claim's measure on synthetic
curves with known answers, and the command end to end on a tiny preset."""

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sparsedd.analysis import claims as C
from sparsedd.cli import main

# --- statistics -----------------------------------------------------------------------------------

# Student t quantiles from a printed table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE = [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 29, 2.0452),
           (0.975, 100, 1.9840), (0.995, 4, 4.6041), (0.99, 10, 2.7638), (0.95, 3, 2.3534), (0.90, 5, 1.4759)]


@pytest.mark.parametrize("p, df, t", T_TABLE)
def test_t_interval_uses_the_tables_quantile(p, df, t):
    """n = df + 1 values whose sd / sqrt(n) is 1: the half width is the two-sided quantile at confidence 2p - 1."""
    n = df + 1
    values = [0.0] * n
    values[0], values[1] = math.sqrt(n * df / 2), -math.sqrt(n * df / 2)  # sum of squares n * df: sd = sqrt(n)
    mean, lo, hi = C.t_interval(values, 2 * p - 1)
    assert mean == 0.0 and hi == pytest.approx(t, abs=6e-5) and lo == pytest.approx(-t, abs=6e-5)


def test_t_interval_by_hand():
    mean, lo, hi = C.t_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert (mean, lo, hi) == pytest.approx((3.0, 3 - half, 3 + half), abs=1e-6)
    assert C.t_interval([2.0, float("nan"), 4.0])[0] == 3.0  # NaN dropped
    assert all(math.isnan(v) for v in C.t_interval([1.0])[1:])  # one value: no interval
    assert C.Part("m", [1.0, 1.0], ">", 0).verdict == "inconclusive"  # a zero-width interval from two seeds
    assert C.Part("m", [1.0, 1.0, 1.0], ">", 0).verdict == "holds"
    _, lo99, hi99 = C.t_interval([1, 2, 3, 4, 5], 0.99)
    assert lo99 < lo and hi99 > hi


def test_degenerate_inputs_give_nan_or_a_zero_width_interval_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in C.t_interval([]))  # no value
        assert all(math.isnan(v) for v in C.t_interval([float("nan"), None]))
        mean, lo, hi = C.t_interval([2.0, float("nan")])  # one seed left
        assert mean == 2.0 and math.isnan(lo) and math.isnan(hi)
        assert C.t_interval([0.25, 0.25, 0.25]) == (0.25, 0.25, 0.25)  # zero variance: zero width, not NaN
        part = C.Part("m", [float("nan"), 1.0, 2.0], ">", 0)
        assert part.verdict == "inconclusive" and part.value == 1.5  # two seeds give a value: shown, not judged
        assert math.isnan(C.spearman([1, 2, 3], [4, 4, 4]))  # constant
        assert math.isnan(C.spearman([5, 5, 5], [1, 2, 3]))
        assert math.isnan(C.spearman([1.0], [2.0])) and math.isnan(C.spearman([], []))  # too short
        assert C.spearman([1, 2], [3, 5]) == pytest.approx(1.0)  # two pairs: +-1
        assert C.spearman([1, 2, float("nan"), 4], [1, 3, 2, 2]) == pytest.approx(0.5)  # the NaN's pair left out
        assert math.isnan(C.spearman([1, 2, float("nan")], [1, 1, 2]))  # constant once the NaN's pair is out
        assert C.spearman([1, 2, float("inf")], [3, 2, 1]) == pytest.approx(-1.0)  # inf is a rank like any other
    with pytest.raises(ValueError):
        C.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        C.t_interval([1, 2, 3], 1.0)


def test_one_spearman_for_the_claims_and_the_distance_table():
    """The distance table (sparsedd.analysis.curves) and claim 5 call the same function, whose answers are
    pandas' rank correlation and scipy's, ties included."""
    from sparsedd.analysis import curves, stats

    assert C.spearman is stats.spearman and curves.spearman is stats.spearman
    x, y = [0.3, 0.1, 0.1, 0.7, 0.5, 0.5, 0.9], [2.0, 1.0, 3.0, 3.0, 0.5, 8.0, 8.0]
    assert C.spearman(x, y) == pytest.approx(pd.Series(x).corr(pd.Series(y), method="spearman"), rel=1e-12)
    docs = Path(__file__).resolve().parents[1] / "docs" / "results" / "mnist1d-quick"
    levels = pd.read_csv(docs / "4af4bb2e0fbf5343-levels.csv")  # one seed: its row and the mean's are the same
    table = pd.read_csv(docs / "4af4bb2e0fbf5343-distance.csv")
    assert table["spearman"].tolist() == pytest.approx([C.spearman(levels["distance"], levels["test_acc"])] * 2,
                                                       rel=1e-12)


STORED = sorted((Path(__file__).resolve().parents[1] / "docs" / "results" / "claims").glob("*.json"))


@pytest.mark.parametrize("path", [p for p in STORED if "claims" in json.loads(p.read_text())], ids=lambda p: p.name)
def test_stored_claims_are_reproduced_from_their_per_seed_values(path):
    """Every interval and verdict of docs/results/claims/*.json, recomputed from its stored (rounded) per-seed
    values, agrees with what was printed: scipy's quantile replaced a hand-written one."""
    doc = json.loads(path.read_text())
    near = dict(rel=1e-6, abs=2e-6)  # the per-seed values are printed to 6 decimals, as are the means
    for c in doc["claims"]:
        parts = []
        for d in c["parts"]:
            thr = tuple(d["threshold"]) if isinstance(d["threshold"], list) else d["threshold"]
            test = "within" if d["test"].startswith("in (") else d["test"].split()[0]
            per = [math.nan if v is None else v for v in d["per_seed"]]
            p = C.Part(d["measure"], per, test, thr, d["confidence"])
            assert [p.value, p.lo, p.hi] == [pytest.approx(v, **near) if v is not None else None
                                              for v in [d["value"], *d["ci"]]], (c["claim"], d)
            assert p.verdict == d["verdict"], (c["claim"], d)
            parts.append(p)
        rows = [C.Outcome(parts, c["combine"], h, c["measure"]).row() for h in ("first", "envelope")]
        row = next(r for r in rows if r["value"] == pytest.approx(c["value"], **near))
        assert row["ci"] == pytest.approx(c["ci"], **near) and row["verdict"] == c["verdict"]


@pytest.mark.parametrize("lo, hi, test, thr, want", [
    (0.1, 0.5, ">", 0, "holds"), (-0.5, -0.1, ">", 0, "does not hold"), (-0.1, 0.5, ">", 0, "inconclusive"),
    (-0.9, -0.6, "<", -0.5, "holds"), (-0.4, 0.2, "<", -0.5, "does not hold"), (-0.7, -0.3, "<", -0.5, "inconclusive"),
    (-0.2, 0.3, "within", (-0.5, 0.5), "holds"), (0.6, 0.9, "within", (-0.5, 0.5), "does not hold"),
    (0.2, 0.7, "within", (-0.5, 0.5), "inconclusive"), (math.nan, math.nan, ">", 0, "inconclusive")])
def test_verdict(lo, hi, test, thr, want):
    assert C.verdict(lo, hi, test, thr) == want


def test_combine():
    h, f, o = C.HOLDS, C.FAILS, C.OPEN
    assert [C.combine(v, "all") for v in ([h, h], [h, o], [h, f, o])] == [h, o, f]
    assert [C.combine(v, "any") for v in ([f, h], [f, o], [f, f])] == [h, o, f]


def test_curve_measures():
    assert C.dd_margin([0.5, 0.45, 0.6, 0.4]) == pytest.approx(0.05)  # dip 5, rise 10 above dense, end 10 below
    assert C.dd_margin([0.5, 0.45, 0.4, 0.35]) == pytest.approx(-0.10)  # never above dense again
    assert C.dd_margin(FIG1) == pytest.approx(0.07)  # the paper's Fig. 1: dip 7.0, rise 12.0, fall 8.9 (pp)
    assert C.dd_margin([0.5, 0.52, 0.55, 0.6]) < 0  # only rising
    assert C.dd_margin([0.5, 0.45, 0.55, 0.6]) < 0  # dip and rise, no fall from the peak
    assert C.log_density(0.99) == pytest.approx(2.0)
    assert C.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert C.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(10 * 9.5))  # ties: ranks 3.5
    assert math.isnan(C.spearman([1, 2, 3], [4, 4, 4]))
    c = frame([[0.5] * 4], train=[[1.0, 1.0, 0.9, 0.5]])
    x1, x2 = C.log_density(0.5), C.log_density(0.75)
    assert C.interpolation_threshold(c) == pytest.approx(x1 + 0.1 * (x2 - x1))
    assert math.isnan(C.interpolation_threshold(frame([[0.5] * 4])))
    assert C.reinit_levels(pd.DataFrame({"level": range(4)})) == [1, 2, 3]
    peak = frame([[0.5, 0.4, 0.6, 0.6, 0.3]])  # a flat top between levels 2 and 3: the vertex halfway
    assert C.sweet_position(peak) == pytest.approx((C.log_density(0.75) + C.log_density(0.875)) / 2)
    assert C.sweet_position(frame([[0.5, 0.4, 0.45, 0.6]])) == pytest.approx(C.log_density(0.875))  # last level
    assert C.reinit_levels(pd.DataFrame({"level": range(25)})) == [1, 4, 8, 11, 14, 17, 21, 24]


# --- synthetic evidence ---------------------------------------------------------------------------

SEEDS = 6


def frame(accs, train=None, distance=None, fraction=0.5):
    """Per-seed curves (one list of test accuracies per seed) as the store's level rows."""
    rows = []
    for seed, acc in enumerate(accs):
        for level, a in enumerate(acc):
            rows.append({"seed": seed, "level": level, "sparsity": 1 - (1 - fraction) ** level, "test_acc": a,
                         "train_acc_noisy": train[seed][level] if train else 1.0,
                         "distance": distance[seed][level] if distance else float(level)})
    return pd.DataFrame(rows)


def jitter(values, seed):
    """A small seed-dependent perturbation, so the seeds are not identical."""
    return [v + 0.002 * ((seed * 7 + i) % 3 - 1) for i, v in enumerate(values)]


def seeds_of(curve):
    return frame([jitter(curve, s) for s in range(SEEDS)])


class Fake:
    def __init__(self, curves, analyses=None, train=None):
        self.curves, self.analyses, self.train, self.asked = curves, analyses or {}, train, []

    def train_config(self, role):
        return self.train

    def curve(self, role):
        return self.curves[role]

    def label(self, role):
        return role

    def analysis(self, role, kind, settings, levels):
        self.asked.append((kind, settings))
        df = self.analyses[(role, kind)]
        return df[df["level"].isin(levels)].reset_index(drop=True)


def mix(a: Fake, b: Fake) -> Fake:
    """Seeds alternate between two scenarios: the answer is within the seeds' noise."""
    def pick(x, y):
        return pd.concat([x[x["seed"] % 2 == 0], y[y["seed"] % 2 == 1]]).sort_values(["seed", "level"])
    return Fake({r: pick(a.curves[r], b.curves[r]) for r in a.curves},
                {k: pick(a.analyses[k], b.analyses[k]) for k in a.analyses})


DD = [0.50, 0.45, 0.60, 0.40]  # dip, rise above dense, collapse
# the paper's Fig. 1 (LeNet-300-100, MNIST, 20% noise): dense 83.4%, 76.4% at 89.3%, 95.4% at 98.8%, 86.5% at 99.5%
FIG1 = [0.834, 0.764, 0.954, 0.865]
NO_DD = [0.50, 0.45, 0.40, 0.35]  # falls only


def claim1(holds):
    c = seeds_of(DD if holds else NO_DD)
    return Fake({r: c for r in ("base", "noise", "method", "retrain")})


LIGHT = [0.50, 0.45, 0.60, 0.55, 0.50, 0.30]  # sweet spot at level 2, +10
HEAVY = [0.40, 0.35, 0.38, 0.55, 0.45, 0.30]  # sweet spot at level 3, +15


def claim2(holds):
    return Fake({"base": seeds_of(LIGHT if holds else HEAVY), "noise": seeds_of(HEAVY if holds else LIGHT)})


def claim3(holds):
    early, late = [1, 1, 0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1, 0.9, 0.8]
    full, half = (early, late) if holds else (late, early)
    acc = [[0.5] * 6] * SEEDS
    return Fake({"base": frame(acc, train=[jitter(full, s) for s in range(SEEDS)]),
                 "data": frame(acc, train=[jitter(half, s) for s in range(SEEDS)])})


def analysis_rows(levels, **columns):
    return pd.DataFrame([{"seed": s, "level": lv, **{k: v + 0.002 * ((s + lv) % 3 - 1) for k, v in columns.items()}}
                         for s in range(SEEDS) for lv in levels])


def claim4(holds):
    redense = analysis_rows([2], level_test_acc=0.60, test_acc=0.55 if holds else 0.65)
    return Fake({"base": seeds_of(LIGHT)}, {("base", "redense"): redense})


SEVEN = [0.50, 0.45, 0.60, 0.55, 0.52, 0.40, 0.30]


def uncorrelated(acc):
    """Values whose Spearman correlation with ``acc`` is exactly 0."""
    for perm in itertools.permutations(range(len(acc))):
        if C.spearman(acc, perm) == 0:
            return [float(p) for p in perm]


def claim5(holds):
    accs = [jitter(SEVEN, s) for s in range(SEEDS)]
    sign = -1 if holds else 1
    base = frame(accs, distance=[[sign * a for a in acc] for acc in accs])
    eig = uncorrelated(SEVEN) if holds else [10 * a for a in SEVEN]
    sharp = pd.DataFrame([{"seed": s, "level": lv, "level_test_acc": accs[s][lv], "top_eigenvalue": eig[lv]}
                          for s in range(SEEDS) for lv in range(7)])
    return Fake({"base": base}, {("base", "sharpness"): sharp})


def claim6(holds):
    levels = [1, 2, 3]
    rows = pd.concat([analysis_rows([lv], ticket_test_acc=0.5, reinit_test_acc=0.55 if holds and lv == 2 else 0.47)
                      for lv in levels])
    return Fake({"ticket": seeds_of(DD)}, {("ticket", "reinit"): rows})


SCENARIOS = {"1": claim1, "2": claim2, "3": claim3, "4": claim4, "5": claim5, "6": claim6}


@pytest.mark.parametrize("number", sorted(SCENARIOS))
def test_each_claim_on_synthetic_curves(number):
    claim, make = C.CLAIMS[number], SCENARIOS[number]
    holds, fails = claim.measure(make(True)).row(), claim.measure(make(False)).row()
    noisy = claim.measure(mix(make(True), make(False))).row()
    assert holds["verdict"] == "holds", holds
    assert fails["verdict"] == "does not hold", fails
    assert noisy["verdict"] == "inconclusive", noisy
    assert holds["ci"][0] <= holds["value"] <= holds["ci"][1]
    assert all(len(p["per_seed"]) == SEEDS for p in holds["parts"])


@pytest.mark.parametrize("preset, settings", [
    ("paper-mnist-lenet", {}),  # a constant 0.1 without momentum: the analysis's defaults are the code's
    ("mnist1d-quick", {}),
    ("mnist-conv-quick", {}),  # a cosine schedule, which the paper's code has not: the defaults
    ("paper-cifar10-resnet18", {"lr": 0.001, "carry_optimizer": True}),  # on at 0.001, momentum carried
    ("paper-tinyimagenet-resnet101", {"lr": 0.002, "carry_optimizer": True}),
])
def test_claim4_re_denses_as_the_paper_code_after_the_runs_schedule(preset, settings):
    """(found by review: claim 4 always re-densed at the run's starting rate, 0.1 on CIFAR, where the code goes on
    at the 0.001 its schedule reached)"""
    from sparsedd import config_load

    fake = claim4(True)
    fake.train = config_load.load(preset).train
    C.CLAIMS["4"].measure(fake)
    assert fake.asked == [("redense", settings)]


def test_claim1_holds_on_the_papers_own_figure_and_not_on_a_rising_curve():
    """The paper's Fig. 1 ends above its dense accuracy: the collapse is a fall from the peak, so claim 1
    holds there; a curve that only rises has no dip and no fall, so it does not."""
    fig1 = Fake({r: seeds_of(FIG1) for r in ("base", "noise", "method", "retrain")})
    row = C.CLAIMS["1"].measure(fig1).row()
    assert row["verdict"] == "holds" and row["value"] == pytest.approx(7.0, abs=0.3)
    rising = Fake({r: seeds_of([0.834, 0.85, 0.90, 0.954]) for r in ("base", "noise", "method", "retrain")})
    assert C.CLAIMS["1"].measure(rising).row()["verdict"] == "does not hold"
    from sparsedd.analysis import phases

    p = phases.detect([0.0, 0.893, 0.988, 0.995], FIG1)
    assert p.found and p.sweet.level == 2 and p.collapse.level == 3 and p.sweet_above_dense


def test_claim_values_are_the_known_answers():
    r1 = C.CLAIMS["1"].measure(claim1(True)).row()
    assert r1["value"] == pytest.approx(5.0, abs=0.3) and len(r1["parts"]) == 4  # 5 points of margin, 4 settings
    r2 = C.CLAIMS["2"].measure(claim2(True)).row()
    step = C.log_density(0.5)  # one level
    assert 0.5 * step < r2["value"] < 1.5 * step  # one level further, give or take the parabola's refinement
    assert r2["parts"][1]["value"] == pytest.approx(5.0, abs=0.5)  # gain 15 against 10 points
    r6 = C.CLAIMS["6"].measure(claim6(True)).row()
    assert r6["value"] == pytest.approx(5.0, abs=0.3) and r6["parts"][1]["confidence"] == pytest.approx(1 - 0.05 / 3)
    assert r6["ci"] == [max(p["ci"][0] for p in r6["parts"]), max(p["ci"][1] for p in r6["parts"])]


# --- the command end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def claims_root(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("claims")
    sets = TINY + ["prune.levels=3", "train.batch_size=120"]
    args = ["claims", "--root", str(root), "--seeds", "2", "--no-progress", "--executor", "inline", "--batch", "off",
            "--sparse", "off",
            "--format", "json"] + [a for s in sets for a in ("--set", s)]
    return root, args


def test_claims_command_end_to_end(claims_root, capsys):
    root, args = claims_root
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["preset"] == "mnist1d-quick" and doc["seeds"] == 2
    assert [c["claim"] for c in doc["claims"]] == [1, 2, 3, 4, 5, 6]
    runs = set(doc["runs"].values())
    assert len(runs) == 5 and (root / "claims" / f"{doc['id']}.json").exists()
    for c in doc["claims"]:
        assert {"claim", "text", "measure", "value", "ci", "threshold", "verdict", "runs"} <= set(c)
        assert c["verdict"] in ("holds", "does not hold", "inconclusive") and len(c["ci"]) == 2
        assert set(c["runs"]) <= runs and c["runs"]
        for p in c["parts"]:
            assert len(p["per_seed"]) == 2
    # a second call trains nothing and gives the same answer
    stages = sorted(p.name for p in (root / "stages").iterdir())
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert sorted(p.name for p in (root / "stages").iterdir()) == stages
    md_args = [a if a != "json" else "markdown" for a in args]
    assert main(md_args) == 0
    md = capsys.readouterr().out
    assert md.startswith("| claim | measure |") and "Student t" in md
    # a subset of the claims reads a subset of the runs, and is saved beside the whole
    assert main(args + ["--only", "4,5"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert [c["claim"] for c in part["claims"]] == [4, 5] and set(part["runs"]) == {"base", "ticket"}
    assert part["claims"] == doc["claims"][3:5] and len(list((root / "claims").glob("*.json"))) == 2


def test_report_show_and_phases_after_claims(claims_root, capsys, tmp_path):
    root, args = claims_root
    if not (root / "claims").exists():
        assert main(args) == 0
        capsys.readouterr()
    doc = max((json.loads(p.read_text()) for p in (root / "claims").glob("*.json")), key=lambda d: len(d["claims"]))
    base = doc["runs"]["base"]
    assert main(["show", base, "--root", str(root), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["levels"]) == 8 and {r["seed"] for r in shown["levels"]} == {0, 1}  # unchanged: per seed
    assert [r["level"] for r in shown["mean"]] == [0, 1, 2, 3] and shown["mean"][0]["seeds"] == 2
    per_seed = [r["test_acc"] for r in shown["levels"] if r["level"] == 2]
    assert shown["mean"][2]["test_acc"] == pytest.approx(sum(per_seed) / 2)
    assert shown["mean"][2]["test_acc_sd"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
    assert main(["analyze", base, "phases", "--root", str(root), "--format", "json", "--no-progress"]) == 0
    phases = json.loads(capsys.readouterr().out)
    mean = [r for r in phases if r["seed"] == "mean"]
    assert mean and all(0 <= r["seeds_agree"] <= r["seeds"] == 2 for r in mean)
    assert all(r["seeds_agree"] is None for r in phases if r["seed"] != "mean")
    out = tmp_path / "report"
    assert main(["report", *dict.fromkeys(doc["runs"].values()), "--root", str(root), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "Claims 1, 2, 3, 4, 5, 6 (preset mnist1d-quick, 2 seeds)" in page  # which claims: --only differ here
    assert (out / "tables" / f"claims-{doc['id']}.csv").exists() and f"(result <code>{doc['id']}</code>)" in page
    assert "<code>--set data.num_train=240 --set data.num_test=120" in page  # and --set here
    assert main(["report", base, "--root", str(root), "--out", str(tmp_path / "one")]) == 0
    only_base = [d for d in map(json.loads, map(Path.read_text, (root / "claims").glob("*.json")))
                 if set(d["runs"].values()) == {base}]  # the whole claims need runs not shown; --only 4,5 does not
    assert (tmp_path / "one" / "index.html").read_text().count("<h2>Claim") == len(only_base)


def test_the_evidence_without_unstable_levels_leaves_out_their_analyses_and_seeds_without_a_baseline(monkeypatch):
    from types import SimpleNamespace

    from sparsedd import claims as claims_mod
    from sparsedd import results

    unstable = ["", "", "evaluation", "evaluation", "", "", "", "training"]  # seed 1: dense; seed 2: its one pruned
    curve = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1, 2, 2], "level": [0, 1, 2, 0, 1, 2, 0, 1], "unstable": unstable})
    reads = []
    monkeypatch.setattr(results, "run_curve", lambda store, run_id: reads.append(run_id) or curve)
    runs = SimpleNamespace(roles={"base": SimpleNamespace(run_id="r")})
    rows = pd.DataFrame({"seed": [0, 0, 1, 2], "level": [1, 2, 1, 1], "top_eigenvalue": [1.0, 2.0, 3.0, 4.0]})
    for unstable, pairs, values in (("keep", set(zip(curve["seed"], curve["level"])), [1.0, 2.0, 3.0, 4.0]),
                                    ("drop", {(0, 0), (0, 1)}, [1.0])):
        ev = claims_mod.StoreEvidence(None, runs, None, unstable)
        ev._analyzers["r"] = SimpleNamespace(run=lambda kind, settings, levels, progress=None: rows)
        assert set(zip(ev.curve("base")["seed"], ev.curve("base")["level"])) == pairs
        assert ev.analysis("base", "sharpness", {}, [1, 2])["top_eigenvalue"].tolist() == values
    assert reads == ["r", "r"]  # the store read once per evidence, however often the claims ask


def test_claims_list_the_levels_that_ended_unstable_and_drop_them_as_another_result(claims_root, capsys, tmp_path):
    from test_unstable import _end_unstable

    from sparsedd.config import stable_hash
    from sparsedd.store import Store

    root, args = claims_root
    if not (root / "claims").exists():
        assert main(args) == 0
    copy = tmp_path / "copy"  # the module's store stays as the other tests find it
    shutil.copytree(root, copy)
    args = [str(copy) if a == str(root) else a for a in args]
    capsys.readouterr()
    assert main(args) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["unstable"] == {"levels": "keep", "ended": []}
    assert kept["id"] == stable_hash([kept["sweep"], [str(c["claim"]) for c in kept["claims"]]])  # as before drop
    base = kept["runs"]["base"]
    store = Store(copy)
    _end_unstable(store, store.index.run_stages(base)[(0, 2)])

    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["unstable"]["ended"] == [{"run": base, "seed": 0, "level": 2, "kind": "evaluation"}]
    assert doc["id"] == kept["id"] and doc["claims"] == kept["claims"]  # kept: measured as before
    assert main([*args, "--unstable", "drop"]) == 0
    dropped = json.loads(capsys.readouterr().out)
    assert dropped["id"] != doc["id"] and dropped["unstable"]["levels"] == "drop"
    assert (copy / "claims" / f"{dropped['id']}.json").exists() and (copy / "claims" / f"{doc['id']}.json").exists()
    margin = lambda d: next(p for p in d["claims"][0]["parts"] if p["setting"] == "base")["per_seed"]  # noqa: E731
    assert margin(dropped)[0] is None and margin(dropped)[1] == margin(doc)[1]  # seed 0 keeps 3 levels: no margin

    text = f"1 level(s) ended unstable: run {base} seed 0 level 2 (evaluation). "
    assert main(["markdown" if a == "json" else a for a in args]) == 0
    assert text + "Measured as they ended; `--unstable drop` measures without them." in capsys.readouterr().out
    out = tmp_path / "report"
    assert main(["report", *dict.fromkeys(doc["runs"].values()), "--root", str(copy), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "2 seeds, unstable levels dropped)" in page and text + "Measured without them (--unstable drop)." in page
    _end_unstable(store, store.index.run_stages(base)[(1, 0)])  # seed 1's dense level: no baseline to measure from
    capsys.readouterr()
    assert main([*args, "--unstable", "drop"]) == 0
    assert len(margin(json.loads(capsys.readouterr().out))) == 1  # seed 0 alone (its value none)
    with pytest.raises(SystemExit) as bad:
        main([*args, "--unstable", "maybe"])
    assert bad.value.code == 2 and "argument --unstable: invalid choice: 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--seeds", "1"], "at least 2 seeds"),
    (["--set", "prune.levels=2"], "prune.levels >= 3"),
    (["--set", "data.noise=0.9"], "data.noise <= 0.8"),
    (["--preset", "nope"], "unknown preset"),
    (["--only", "7"], "--only takes claim numbers"),
])
def test_claims_bad_input(tmp_path, capsys, extra, words):
    assert main(["claims", "--root", str(tmp_path), "--seeds", "2", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "stages").exists()


def test_a_damaged_claims_result_is_named_in_the_report_not_shown_and_doctor_sets_it_aside(claims_root, capsys,
                                                                                            tmp_path):
    root, args = claims_root
    if not (root / "claims").exists():
        assert main(args) == 0
    capsys.readouterr()
    copy = tmp_path / "copy"  # the module's store stays as the other tests find it
    shutil.copytree(root, copy)
    saved = max((copy / "claims").glob("*.json"), key=lambda p: len(json.loads(p.read_text())["claims"]))
    runs = list(dict.fromkeys(json.loads(saved.read_text())["runs"].values()))
    intact = [p for p in (copy / "claims").glob("*.json")  # shown beside it (--only 4,5, where that test ran first)
              if p != saved and set(json.loads(p.read_text())["runs"].values()) <= set(runs)]
    saved.write_text(re.sub(r'"claim": \d', '"claim": 9', saved.read_text(), count=1))  # a changed claim number
    assert saved.read_text() != (root / "claims" / saved.name).read_text()
    report = ["report", *runs, "--root", str(copy)]
    assert main([*report, "--out", str(tmp_path / "report")]) == 0  # the rest of the report stands
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsedd: note: ") and saved.name in err[0] and "damaged" in err[0]
    assert "sparsedd doctor --repair" in err[0]
    page = (tmp_path / "report" / "index.html").read_text()
    assert saved.name in page and "damaged" in page and page.count("<h2>Claim") == len(intact)
    assert not (tmp_path / "report" / "tables" / f"claims-{saved.stem}.csv").exists()

    assert main(["doctor", "--root", str(copy)]) == 1
    assert f"claims result {saved} is damaged" in capsys.readouterr().out
    assert main(["doctor", "--root", str(copy), "--repair"]) == 0
    assert not saved.exists() and saved.with_name(saved.name + ".damaged").exists()
    capsys.readouterr()
    assert main([*report, "--out", str(tmp_path / "again")]) == 0 and "damaged" not in capsys.readouterr().err


def test_claims_say_each_level_their_analyses_compute(claims_root):
    from sparsedd.claims import run_claims
    from sparsedd.options import ExecOptions

    root, args = claims_root
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    said = []
    run_claims(None, sets, 2, root, ExecOptions(progress=False, batch="off", sparse="off"), executor="inline",
               progress=said.append, only=[4, 5])
    assert said[0] == "claim 4" and "claim 5" in said
    assert any(line.startswith("redense: seed") for line in said)  # hours on the paper's settings: not silent
    assert any(line.startswith("sharpness: seed 1 level") for line in said)
