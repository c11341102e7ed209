"""The paper's pruning variants through the loop: the gradient rule, one-shot pruning, network slimming;
and their configuration keys (validation, ids)."""

import pytest
import torch

import sparsedd.experiments.replicate as imp  # where the loop calls the saliency and the training
from sparsedd import config as c
from sparsedd.cli import main
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions, run
from sparsedd.store import Store


def one_line_error(sets):
    with pytest.raises(SparseddError) as e:
        c.load(sets=sets)
    assert "\n" not in str(e.value)
    return str(e.value)


def do_run(tmp_path, sets):
    cfg = c.load(sets=sets)
    store = Store(tmp_path / "runs")
    rid = run(cfg, store, options=ExecOptions(progress=False))
    return cfg, store, rid


def finals(store, run_id):
    return [store.final(sid) for sid in store.index.run_stages(run_id).values()]


# --- the gradient rule


def test_gradient_rule_defaults_and_paper_presets():
    assert c.RunConfig().prune.gradient_rule == "multi"  # today's rule stays the default
    for name in c.presets():
        if name.startswith("paper-"):
            assert c.load(name).prune.gradient_rule == "paper", name


def test_gradient_rule_enters_ids_of_gradient_pruning_only():
    base = c.load()
    assert c.load(sets=["prune.gradient_rule=paper"]).run_id == base.run_id  # magnitude: no effect, no new id
    grad = c.load(sets=["prune.method=gradient"])
    paper = c.load(sets=["prune.method=gradient", "prune.gradient_rule=paper"])
    assert paper.run_id != grad.run_id
    assert paper.prune.round_key() == {**grad.prune.round_key(), "gradient_rule": "paper"}
    assert "gradient_rule" not in grad.prune.round_key()  # the multi rule's stage ids as before
    # stored configs keep the rule, so a magnitude run switched to gradient later still reads it
    assert c.canonical_dict(c.load("paper-mnist-lenet"), full=True)["prune"]["gradient_rule"] == "paper"


@pytest.mark.parametrize("sets, words", [
    (["prune.gradient_rule=one"], "unknown prune.gradient_rule 'one'; choose one of multi, paper"),
    (["prune.gradient_rule=paper", "prune.gradient_batches=3"], "prune.gradient_batches applies to prune.gradient_rule = 'multi'"),
])
def test_gradient_rule_validation(sets, words):
    assert words in one_line_error(sets)


@pytest.mark.parametrize("rule, batches, train_mode", [("paper", 1, True), ("multi", 10, False)])
def test_loop_scores_gradients_by_the_rule(tmp_path, tiny_sets, monkeypatch, rule, batches, train_mode):
    seen = []
    real = imp.gradient_saliency

    def spy(*args, **kw):
        seen.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(imp, "gradient_saliency", spy)
    do_run(tmp_path, tiny_sets + ["prune.method=gradient", f"prune.gradient_rule={rule}", "prune.levels=1"])
    assert [(kw["batches"], kw["train_mode"]) for kw in seen] == [(batches, train_mode)]
