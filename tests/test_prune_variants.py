"""The paper's pruning variants through the loop: the gradient rule, one-shot pruning, network slimming;
and their configuration keys (validation, ids)."""

import math

import pytest
import torch

from sparsedd.models.vgg import VGG16_PLAN
import sparsedd.experiments.replicate as imp  # where the loop calls the saliency and the training
from sparsedd import config as c
from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions, run
from sparsedd.experiments.stages import level_key, parent_stage, round_key
from sparsedd.pruning import density, magnitude, remaining, total
from sparsedd.store import Store


def one_line_error(sets):
    with pytest.raises(SparseddError) as e:
        config_load.load(sets=sets)
    assert "\n" not in str(e.value)
    return str(e.value)


def do_run(tmp_path, sets):
    cfg = config_load.load(sets=sets)
    store = Store(tmp_path / "runs")
    rid = run(cfg, store, options=ExecOptions(progress=False))
    return cfg, store, rid


def finals(store, run_id):
    return [store.final(sid) for sid in store.index.run_stages(run_id).values()]


# --- the gradient rule


def test_gradient_rule_defaults_and_paper_presets():
    assert c.RunConfig().prune.gradient_rule == "multi"  # today's rule stays the default
    for name in config_load.presets():
        if name.startswith("paper-"):
            assert config_load.load(name).prune.gradient_rule == "paper", name


def test_gradient_rule_enters_ids_of_gradient_pruning_only():
    base = config_load.load()
    assert config_load.load(sets=["prune.gradient_rule=paper"]).run_id == base.run_id  # magnitude: no effect, no new id
    grad = config_load.load(sets=["prune.method=gradient"])
    paper = config_load.load(sets=["prune.method=gradient", "prune.gradient_rule=paper"])
    assert paper.run_id != grad.run_id
    assert round_key(paper.prune) == {**round_key(grad.prune), "gradient_rule": "paper"}
    assert "gradient_rule" not in round_key(grad.prune)  # the multi rule's stage ids as before
    # stored configs keep the rule, so a magnitude run switched to gradient later still reads it
    assert c.canonical_dict(config_load.load("paper-mnist-lenet"), full=True)["prune"]["gradient_rule"] == "paper"


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


# --- one-shot pruning


def dense_weights_pruned_to(dense, level, scope="global"):
    """The mask one-shot level ``level`` must have: the dense final weights ranked by magnitude, pruned
    from a full mask straight to density 0.8 ** level."""
    full = {n: torch.ones_like(m) for n, m in dense["mask"].items()}
    return magnitude({n: dense["model"][n] for n in full}, full, fraction=1 - 0.8 ** level, scope=scope)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_oneshot_level_L_is_the_dense_network_at_density_08_to_the_L(tmp_path, tiny_sets, scope):
    cfg, store, rid = do_run(tmp_path, tiny_sets + ["prune.schedule=oneshot", "prune.levels=3", f"prune.scope={scope}"])
    f = finals(store, rid)
    dense, n = f[0], total(f[0]["mask"])
    for level in (1, 2, 3):
        assert same(f[level]["mask"], dense_weights_pruned_to(dense, level, scope))
        if scope == "global":
            assert remaining(f[level]["mask"]) == n - round((1 - 0.8 ** level) * n)
        assert density(f[level]["mask"]) == pytest.approx(0.8 ** level, abs=2 / n if scope == "global" else 0.01)


def test_oneshot_shares_level_1_with_iterative_then_ranks_the_dense_weights(tmp_path, tiny_sets):
    store = Store(tmp_path / "runs")
    stages = {}
    for schedule in ("iterative", "oneshot"):
        rid = run(config_load.load(sets=tiny_sets + [f"prune.schedule={schedule}"]), store, options=ExecOptions(progress=False))
        stages[schedule] = [sid for (_, level), sid in sorted(store.index.run_stages(rid).items())]
    it, one = stages["iterative"], stages["oneshot"]
    assert it[:2] == one[:2] and it[2] != one[2]  # dense and level 1 are the same computation: one stage each
    dense, level1 = store.final(it[0]), store.final(it[1])["mask"]
    iterative2, oneshot2 = store.final(it[2])["mask"], store.final(one[2])["mask"]
    # iterative level 2 ranks level 1's retrained weights within level 1's mask; one-shot ranks the dense ones
    assert all(not (iterative2[n] & ~level1[n]).any() for n in level1)
    assert same(oneshot2, dense_weights_pruned_to(dense, 2)) and not same(oneshot2, iterative2)
    assert abs(remaining(oneshot2) - remaining(iterative2)) <= 1  # the same density, up to rounding


def test_oneshot_level_ids_chain_the_dense_stage_not_the_previous_level():
    it, one = config_load.load(), config_load.load(sets=["prune.schedule=oneshot"])
    assert parent_stage(it, ["dense", "l1", "l2"]) == "l2" and parent_stage(one, ["dense", "l1", "l2"]) == "dense"
    assert level_key(one, "dense", 1) == level_key(it, "dense", 1)
    key = level_key(one, "dense", 3)
    assert key["parent"] == "dense" and key["level"] == 3 and key["prune"]["schedule"] == "oneshot"
    assert key != level_key(it, "dense", 3) and key != level_key(one, "dense", 2)
    assert level_key(config_load.load(sets=["prune.schedule=oneshot", "prune.levels=5"]), "dense", 3) == key  # levels: no split
    assert level_key(config_load.load(sets=["prune.schedule=oneshot", "retrain.mode=reinit"]), "dense", 3) != key
    assert "schedule" not in c.canonical_dict(it).get("prune", {})  # iterative ids unchanged


def test_oneshot_finetune_starts_from_the_dense_final_weights(tmp_path, tiny_sets, monkeypatch):
    starts = []
    real = imp.train

    def spy(model, data, cfg, mask, **kw):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, data, cfg, mask, **kw)

    monkeypatch.setattr(imp, "train", spy)
    cfg, store, rid = do_run(tmp_path, tiny_sets + ["prune.schedule=oneshot", "retrain.mode=finetune"])
    dense = finals(store, rid)[0]["model"]
    assert len(starts) == 3 and same(starts[1], dense) and same(starts[2], dense)  # masked by training itself


def test_bad_schedule_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    assert "unknown prune.schedule 'twice'; choose one of iterative, oneshot" in one_line_error(["prune.schedule=twice"])
    assert main(["run", "--root", str(tmp_path / "runs"), "--set", "prune.schedule=twice"]) == 2
    assert not (tmp_path / "runs").exists()
    assert "prune.schedule" in capsys.readouterr().err


# --- network slimming


def test_slimming_validation():
    assert "model 'mlp' has none; use resnet18, vgg16 or resnet101" in one_line_error(["prune.method=slimming"])
    base = {"prune.method": "slimming", "data.name": "cifar10", "model.name": "vgg16"}
    assert config_load.build(base).prune.method == "slimming"
    with pytest.raises(SparseddError, match="prune.layers does not apply to prune.method = 'slimming'"):
        config_load.build({**base, "prune.layers": "all"})


def test_slimming_on_a_model_without_batch_norm_writes_nothing(tmp_path, capsys):
    args = ["run", "--preset", "paper-mnist-lenet", "--root", str(tmp_path / "runs"), "--set", "prune.method=slimming"]
    assert main(args) == 2
    assert not (tmp_path / "runs").exists()
    err = capsys.readouterr().err.strip()
    assert "model 'lenet-300-100' has none" in err and "\n" not in err


def test_vgg16_slimming_end_to_end(tmp_path):
    from test_image_data import fake_cifar, write_archive
    from test_image_e2e import isolated, run_pipeline  # noqa: F401  (the fixture keeps downloads off)

    write_archive(tmp_path / "data" / "cifar10", 10, fake_cifar(10, per_batch=4, n_test=6))
    levels = run_pipeline(tmp_path, tmp_path / "data", "paper-cifar10-vgg16", ["prune.method=slimming"])
    assert [m["level"] for m, _ in levels] == [0, 1, 2]
    left = [sum(VGG16_PLAN[i] for i in (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16))]  # every BN channel
    for _ in range(2):  # channels left per level by the preset's count (the paper's: ceil(0.2 n) + 1 of n go)
        left.append(left[-1] - math.ceil(0.2 * left[-1]) - 1)
    for metrics, final in levels:
        mask, model = final["mask"], final["model"]
        assert len(mask) == 13 * 3 and not any(n.startswith("fc") for n in mask)  # BN weight, bias and conv per layer
        channels = torch.cat([mask[f"layers.{i}.bn.weight"] for i in (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16)])
        assert int(channels.sum()) == left[metrics["level"]]
        for n, m in mask.items():
            assert torch.all(model[n][~m] == 0)
            if n.endswith("bn.weight"):  # the filters of a dead channel are masked
                conv = mask[n.replace("bn.weight", "conv.weight")]
                assert torch.equal(conv.flatten(1).any(1), m)
