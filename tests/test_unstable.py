"""A level whose last epoch is unstable (its loss finite, so not diverged) is flagged in its metrics and
said by `sparsedd run` and `show`: evaluated far worse than it trained (batch-norm statistics, as
mnist-conv-quick's seed 3 level 9), or a training loss that blew up late."""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY

from sparsedd.cli import main
from sparsedd.store import Store
from sparsedd.store.files import write_json
from sparsedd.training import loop
from sparsedd.training.loop import unstable_end


def rows(running, evaluated=None):
    evaluated = evaluated or [math.nan] * len(running)
    return [{"epoch": i + 1, "train_loss_running": r, **({"train_loss": e} if not math.isnan(e) else {})}
            for i, (r, e) in enumerate(zip(running, evaluated))]


def _end_unstable(store: Store, sid: str, evaluated: float = 22.07, running: float = 1.387) -> None:
    """The stage's last epoch as mnist-conv-quick's seed 3 level 9 ended: in its history and in the index."""
    done = store.done_info(sid)
    last = done["history"][-1]
    last.update(train_loss=evaluated, train_loss_running=running)
    write_json(store.stage_dir(sid) / "done.json", done)
    store.index.record_epochs(sid, [last])


def test_ordinary_collapsed_and_diverged_histories_are_not_flagged():
    assert unstable_end(rows([2.3, 1.2, 0.4, 0.05, 0.08])) is None  # noisy near its best, under the floor
    assert unstable_end(rows([2.31, 2.30, 2.30, 2.31])) is None  # a collapsed level: high all along
    assert unstable_end(rows([2.3, math.nan])) is None  # diverged: said as such elsewhere
    assert unstable_end(rows([1.5, 1.4], [1.6, 1.45])) is None
    assert unstable_end([]) is None


def test_an_evaluation_far_worse_than_training_is_flagged():
    # mnist-conv-quick, seed 3 level 9: 1.39 while training, 22.1 evaluated in the last epoch
    found = unstable_end(rows([1.8, 1.5, 1.387], [math.nan, 1.396, 22.07]))
    assert found == {"kind": "evaluation", "epoch": 3, "train_loss": 22.07, "train_loss_running": 1.387}
    # a spike in an earlier epoch that the network recovers from is not its end
    assert unstable_end(rows([1.8, 1.5, 1.37], [math.nan, 18.6, 1.37])) is None


def test_a_late_blow_up_of_the_training_loss_is_flagged():
    found = unstable_end(rows([2.3, 0.6, 0.3, 4.2]))
    assert found == {"kind": "training", "epoch": 4, "train_loss_running": 4.2, "best_train_loss_running": 0.3,
                     "best_epoch": 3}


def test_show_says_which_levels_ended_unstable(tmp_path, tiny_sets, capsys):
    root = tmp_path / "root"
    sets = [x for s in tiny_sets for x in ("--set", s)]
    assert main(["run", "--root", str(root), "--no-progress", *sets]) == 0
    capsys.readouterr()
    store = Store(root)
    [run_id] = store.index.run_ids()
    stages = store.index.run_stages(run_id)
    assert all("unstable" not in store.done_info(sid)["metrics"] for sid in stages.values())
    assert main(["show", run_id, "--root", str(root)]) == 0
    assert "sparsedd: note" not in capsys.readouterr().err

    # level 1 as mnist-conv-quick's seed 3 level 9 was: evaluated far worse than it trained at its end
    _end_unstable(store, stages[(0, 1)])
    assert main(["show", run_id, "--root", str(root)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[1] == (f"sparsedd: note: `sparsedd analyze {run_id} phases --root {root} --set unstable=drop` finds "
                      "the phases without it; show, plot and report take --unstable drop")
    assert len(err) == 2 and err[0].startswith("sparsedd: note: seed 0 level 1: it evaluates far worse than it "
                                               "trained in its last epoch (training loss 22.1 evaluated, 1.39 "
                                               "while training;"), err


def test_training_records_what_unstable_end_finds(monkeypatch):
    from sparsedd.config import TrainConfig
    from sparsedd.models.mlp import MLP
    from sparsedd.training import TrainData, train

    g = torch.Generator().manual_seed(0)
    data = TrainData.clean(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g), 16)
    model = MLP(8, (16,), 3)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=16, epochs=2, eval_every=1)
    seen = []
    monkeypatch.setattr(loop, "unstable_end", lambda h: seen.append(len(h)) or {"kind": "training", "epoch": 2})
    result = train(model, data, cfg, {}, order_key=(0, "t"))
    assert seen == [2] and result.final["unstable"] == {"kind": "training", "epoch": 2}


@pytest.fixture
def two_seeds(tmp_path):
    """A tiny run of two seeds and four levels, seed 0's level 2 made to end unstable."""
    root = tmp_path / "root"
    sets = [*TINY, "prune.levels=3", "seeds=2"]
    assert main(["run", "--root", str(root), "--no-progress", *[x for s in sets for x in ("--set", s)]]) == 0
    store = Store(root)
    [run_id] = store.index.run_ids()
    _end_unstable(store, store.index.run_stages(run_id)[(0, 2)])
    return store, run_id


def test_results_phases_plots_and_report_know_the_unstable_level(two_seeds, monkeypatch, tmp_path, capsys):
    from sparsedd.analysis import phases as phases_mod
    from sparsedd.analysis.curves import phases_table
    from sparsedd.report.figures import fig_curve
    from sparsedd.report.html import write_report
    from sparsedd.results import load

    store, run_id = two_seeds
    levels = load(store.root).levels
    flagged = levels[levels["unstable"] != ""]
    assert flagged[["seed", "level", "unstable"]].values.tolist() == [[0, 2, "evaluation"]]

    seen = []  # what the phase rule is given: (sparsities, test accuracies) per seed, then the mean
    real = phases_mod.detect
    monkeypatch.setattr(phases_mod, "detect", lambda s, t, n, **kw: seen.append((s, t)) or real(s, t, n, **kw))
    sparsity_at = dict(zip(levels["level"], levels["sparsity"]))
    for unstable in ("keep", "drop"):
        table = phases_table(store, run_id, unstable=unstable)
        assert all(sparsity_at[lv] == sp for lv, sp in zip(table["level"], table["sparsity"]))  # levels' own numbers
        seen.clear()
        assert main(["analyze", run_id, "phases", "--root", str(store.root), "--set", f"unstable={unstable}"]) == 0
        (s0, _), (s1, acc1), (mean_s, mean_acc) = seen
        assert len(s1) == len(mean_s) == 4 and len(s0) == (4 if unstable == "keep" else 3)
        seed1_level2 = acc1[2]
        seed0_level2 = float(levels[(levels["seed"] == 0) & (levels["level"] == 2)]["test_acc"].iloc[0])
        expected = seed1_level2 if unstable == "drop" else (seed0_level2 + seed1_level2) / 2
        assert mean_acc[2] == pytest.approx(expected)
    capsys.readouterr()
    assert main(["analyze", run_id, "phases", "--root", str(store.root), "--set", "unstable=maybe"]) == 2
    assert capsys.readouterr().err.strip() == "sparsedd: error: phases: unstable must be one of keep, drop, got 'maybe'"

    fig = fig_curve(levels, None, "t")
    [marked] = [c for c in fig.axes[0].collections if "ended unstable" in str(c.get_label())]
    assert marked.get_offsets().shape == (1, 2)
    page = write_report(store.root, [run_id], tmp_path / "report").read_text()
    assert "1 level(s) ended unstable (marked x): seed 0 level 2 (evaluation)." in page
    assert "The curves' means, the phases and the learning distances here include them" in page

    # --unstable drop: the same levels marked, the lines and the tables without them
    fig = fig_curve(levels, None, "t", unstable="drop")
    [marked] = [c for c in fig.axes[0].collections if "ended unstable" in str(c.get_label())]
    assert marked.get_offsets().shape == (1, 2) and "not in the lines" in marked.get_label()
    seed1_level2 = float(levels[(levels["seed"] == 1) & (levels["level"] == 2)]["test_acc"].iloc[0])
    assert fig.axes[0].lines[0].get_ydata()[2] == pytest.approx(100 * seed1_level2)
    out = tmp_path / "dropped"
    assert main(["report", run_id, "--root", str(store.root), "--out", str(out), "--unstable", "drop"]) == 0
    page = (out / "index.html").read_text()
    assert "The curves' means, the phases and the learning distances here leave them out" in page
    dist = pd.read_csv(out / "tables" / f"{run_id}-distance.csv")
    assert dist[dist["seed"] == "0"]["levels"].iloc[0] == "[0, 1, 3]"
    assert len(pd.read_csv(out / "tables" / f"{run_id}-levels.csv")) == 8  # every level, the unstable one too
    phases = pd.read_csv(out / "tables" / f"{run_id}-phases.csv")
    expected = phases_table(store, run_id, unstable="drop")
    assert phases["level"].tolist() == expected["level"].tolist() and phases["phase"].tolist() == expected["phase"].tolist()
    assert expected["level"].tolist() != phases_table(store, run_id)["level"].tolist() or \
        expected["seed"].tolist() != phases_table(store, run_id)["seed"].tolist()  # drop changes them here

    _end_unstable(store, store.index.run_stages(run_id)[(1, 0)])  # seed 1's dense level too: no baseline left
    table = phases_table(store, run_id, unstable="drop")
    assert set(table["seed"]) <= {0, "mean"} and 0 in set(table[table["phase"] == "dense"]["level"])


def test_phases_of_a_curve_with_a_level_left_out_name_the_levels_themselves():
    from sparsedd.analysis.phases import detect

    # level 2 left out (it ended unstable): positions 2, 3, 4 are levels 3, 4, 5
    p = detect([0.0, 0.2, 0.488, 0.59, 0.672], [0.80, 0.70, 0.90, 0.85, 0.30], [1.0, 1.0, 0.95, 0.9, 0.3],
               levels=[0, 1, 3, 4, 5])
    assert p.found and (p.critical.level, p.sweet.level, p.collapse.level) == (1, 3, 4)
    assert (p.sweet.sparsity, p.train_leaves_full.level) == (0.488, 3)
    with pytest.raises(ValueError):
        detect([0.0, 0.2, 0.36], [0.8, 0.7, 0.9], levels=[0, 1])


def test_distance_keeps_or_drops_the_unstable_level(two_seeds, capsys):
    store, run_id = two_seeds
    for unstable, seed0_levels in (("keep", [0, 1, 2, 3]), ("drop", [0, 1, 3])):
        capsys.readouterr()
        assert main(["analyze", run_id, "distance", "--root", str(store.root), "--set", f"unstable={unstable}",
                     "--format", "json"]) == 0
        rows = {str(r["seed"]): r for r in json.loads(capsys.readouterr().out)}
        assert rows["0"]["levels"] == seed0_levels and len(rows["0"]["distances"]) == len(seed0_levels)
        assert rows["1"]["levels"] == rows["mean"]["levels"] == [0, 1, 2, 3]
    assert main(["analyze", run_id, "distance", "--root", str(store.root), "--set", "unstable=maybe"]) == 2
    assert capsys.readouterr().err.strip() == "sparsedd: error: distance: unstable must be one of keep, drop, got 'maybe'"


def test_show_means_keep_or_drop_the_unstable_level_and_the_per_seed_rows_name_it(two_seeds, capsys, tmp_path):
    store, run_id = two_seeds
    args = ["show", run_id, "--root", str(store.root)]
    docs = {}
    for unstable in ("keep", "drop"):
        capsys.readouterr()
        assert main(args + ["--format", "json", "--unstable", unstable]) == 0
        docs[unstable] = json.loads(capsys.readouterr().out)
    keep, drop = docs["keep"], docs["drop"]
    assert keep["levels"] == drop["levels"] and len(keep["levels"]) == 8  # every seed's rows, either way
    assert [(r["seed"], r["level"]) for r in keep["levels"] if r["unstable"]] == [(0, 2)]
    assert {r["unstable"] for r in keep["levels"] if (r["seed"], r["level"]) != (0, 2)} == {""}
    acc = {(r["seed"], r["level"]): r["test_acc"] for r in keep["levels"]}
    assert keep["mean"][2]["seeds"] == 2 and keep["mean"][2]["test_acc"] == pytest.approx((acc[0, 2] + acc[1, 2]) / 2)
    assert drop["mean"][2]["seeds"] == 1 and drop["mean"][2]["test_acc"] == pytest.approx(acc[1, 2])
    assert "test_acc_sd" not in drop["mean"][2] and keep["mean"][1] == drop["mean"][1]
    assert (keep["unstable_levels"], drop["unstable_levels"]) == ("keep", "drop")
    assert main(args) == 0
    assert "take --unstable drop" in capsys.readouterr().err  # the hint, not where the means already leave them out
    assert main(args + ["--unstable", "drop"]) == 0
    assert "take --unstable drop" not in capsys.readouterr().err

    assert main(args + ["--format", "markdown", "--unstable", "drop"]) == 0
    md = capsys.readouterr().out
    assert "The means leave out the levels that ended unstable (--unstable drop): seed 0 level 2." in md
    assert f"| 2 | {100 * keep['mean'][2]['sparsity']:.2f} | {100 * acc[1, 2]:.2f} |" in md
    assert main(args + ["--format", "markdown"]) == 0
    assert "leave out" not in capsys.readouterr().out
    assert main(args + ["--unstable", "drop"]) == 0
    assert "seed 0 level 2" in capsys.readouterr().out.replace("\n", " ")  # the table's caption

    for stage in store.index.run_stages(run_id).values():
        _end_unstable(store, stage)
    assert main(args + ["--unstable", "drop"]) == 2
    assert capsys.readouterr().err.strip() == ("sparsedd: error: every level ended unstable: no mean is left with "
                                               "--unstable drop; show with --unstable keep (or --format json for the "
                                               "per-seed rows)")
    assert main(args + ["--unstable", "drop", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mean"] == [] and len(doc["levels"]) == 8 and all(r["unstable"] for r in doc["levels"])
    assert main(["report", run_id, "--root", str(store.root), "--out", str(tmp_path / "r"), "--unstable", "drop"]) == 0
    assert "Every level ended unstable: nothing is left with --unstable drop" in (tmp_path / "r" / "index.html").read_text()
    other = [*TINY, "prune.levels=1", "data.noise=0.4"]  # a second run, every level unstable too: nothing to overlay
    assert main(["run", "--root", str(store.root), "--no-progress", *[x for s in other for x in ("--set", s)]]) == 0
    [second] = [r for r in store.index.run_ids() if r != run_id]
    for stage in store.index.run_stages(second).values():
        _end_unstable(store, stage)
    assert main(["report", run_id, second, "--root", str(store.root), "--out", str(tmp_path / "two"),
                 "--unstable", "drop"]) == 0
    assert "No run has a level to overlay left with --unstable drop." in (tmp_path / "two" / "index.html").read_text()
    with pytest.raises(SystemExit) as bad:  # argparse's own refusal
        main(args + ["--unstable", "maybe"])
    assert bad.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err


def test_plot_draws_the_means_with_or_without_the_unstable_level(two_seeds, monkeypatch, tmp_path, capsys):
    from sparsedd.report import plots
    from sparsedd.results import run_curve

    store, run_id = two_seeds
    curve = run_curve(store, run_id)
    acc = {(s, lv): a for s, lv, a in zip(curve["seed"], curve["level"], curve["test_acc"])}
    figs = []
    monkeypatch.setattr(plots.plt, "close", figs.append)  # the figures kept to be read
    for unstable in ("keep", "drop"):
        out = tmp_path / f"{unstable}.png"
        assert main(["plot", run_id, "--root", str(store.root), "--out", str(out), "--unstable", unstable]) == 0
        assert out.stat().st_size > 0
    for fig, level2 in zip(figs, ((acc[(0, 2)] + acc[(1, 2)]) / 2, acc[(1, 2)])):
        test_line = fig.axes[0].lines[0]
        assert test_line.get_ydata()[2] == pytest.approx(100 * level2)
    labels = [[t.get_text() for t in fig.axes[0].get_legend().get_texts()] for fig in figs]
    assert "ended unstable (1 level(s) of a seed)" in labels[0]
    assert "ended unstable (1 level(s) of a seed), not in the lines" in labels[1]

    for stage in store.index.run_stages(run_id).values():  # every level: nothing left to draw without them
        _end_unstable(store, stage)
    capsys.readouterr()
    assert main(["plot", run_id, "--root", str(store.root), "--out", str(tmp_path / "none.png"), "--unstable", "drop"]) == 2
    assert capsys.readouterr().err.strip() == ("sparsedd: error: every level ended unstable: nothing is left to draw "
                                               "with --unstable drop; plot with --unstable keep")
