"""The remedies of the critical dip and early stopping: the distance penalty, distillation from the dense
network, and a validation split with the test accuracy at the best validation epoch."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.config import TrainConfig
from sparsedd.data.split import validation_split
from sparsedd.errors import SparseddError
from sparsedd.experiments.stages import level_key
from sparsedd.store import Store
from sparsedd.training import train
from sparsedd.training.core import Objective, final_metrics, predict
from test_training import pruned_model, tiny_data

ONE_STEP = TrainConfig(lr=0.5, epochs=1, batch_size=96)  # the whole tiny set in one batch: one plain SGD step


def test_distance_penalty_is_the_gradient_of_lambda_times_the_squared_distance():
    model, mask = pruned_model()
    with torch.no_grad():  # start from masked weights, as train() does
        for n, p in model.named_parameters():
            p.mul_(mask[n] if n in mask else 1)
    anchor = {n: p.detach() + 0.3 for n, p in model.named_parameters()}  # an init the weights moved away from
    data, lam = tiny_data(), 0.05
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    loss = F.cross_entropy(ref(data.x), data.y) + lam * sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())
    loss.backward()
    expected = {n: (p - ONE_STEP.lr * p.grad * (mask[n] if n in mask else 1)) * (mask[n] if n in mask else 1)
                for n, p in params.items()}
    train(model, data, ONE_STEP, mask, order_key=(0,), objective=Objective(anchor=anchor, penalty=lam))
    for n, p in model.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6), n
        if n in mask:
            assert torch.all(p[~mask[n]] == 0)  # pruned weights stay zero: the penalty acts on the unpruned ones


def test_distillation_toward_itself_alone_changes_nothing_and_alpha_zero_is_plain_training():
    model, mask = pruned_model()
    data = tiny_data()
    train(model, data, TrainConfig(lr=0.1, epochs=1, batch_size=96), mask, order_key=(0,))  # masked weights zero
    before = copy.deepcopy(model.state_dict())
    own = predict(model, data.x)  # the teacher is the student: the KL term and its gradient are zero
    train(model, data, ONE_STEP, mask, order_key=(0,), objective=Objective(teacher=own, alpha=1.0, temperature=3.0))
    for k, v in model.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-6), k
    plain, off = copy.deepcopy(model), copy.deepcopy(model)
    train(plain, data, ONE_STEP, mask, order_key=(0,))
    train(off, data, ONE_STEP, mask, order_key=(0,), objective=Objective(teacher=own, alpha=0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))


def test_distillation_with_alpha_one_follows_the_teacher_not_the_labels():
    model, mask = pruned_model()
    data = tiny_data()
    teacher = torch.zeros(data.n, 4)
    teacher[:, 2] = 10.0  # a teacher sure of class 2 everywhere
    train(model, data, TrainConfig(lr=0.05, epochs=30, batch_size=32), mask, order_key=(0,),
          objective=Objective(teacher=teacher, alpha=1.0, temperature=1.0))
    assert (predict(model, data.x).argmax(1) == 2).float().mean() > 0.95


def test_validation_split_is_seeded_disjoint_and_complete():
    keep, held = validation_split(100, 0.2)
    assert len(held) == 20 and len(keep) == 80 and torch.equal(torch.cat([keep, held]).sort().values, torch.arange(100))
    assert torch.equal(held, validation_split(100, 0.2)[1]) and not torch.equal(held, validation_split(100, 0.3)[1][:20])
    assert list(held) == sorted(held.tolist())


def test_final_metrics_take_the_test_accuracy_at_the_best_validation_epoch():
    history = [{"epoch": 1, "test_acc": 0.5, "val_acc": 0.4}, {"epoch": 2}, {"epoch": 3, "test_acc": 0.7, "val_acc": 0.6},
               {"epoch": 4, "test_acc": 0.9, "val_acc": 0.6}, {"epoch": 5, "test_acc": 0.6, "val_acc": 0.5}]
    final = final_metrics(history, history[-1])
    assert final["test_acc"] == 0.6 and final["test_acc_best"] == 0.9
    assert (final["val_acc_best"], final["test_acc_at_best_val"], final["epoch_at_best_val"]) == (0.6, 0.7, 3)
    assert "test_acc_at_best_val" not in final_metrics([{"epoch": 1, "test_acc": 0.5}], {"epoch": 1, "test_acc": 0.5})


def run_tiny(tmp_path, tiny_sets, *sets):
    root = tmp_path / "runs"
    args = ["run", "--root", str(root), "--no-progress", "--sparse", "off"]
    assert main(args + [a for s in [*tiny_sets, *sets] for a in ("--set", s)]) == 0
    store = Store(root)
    run_id = store.index.run_ids()[-1]
    return store, [store.done_info(sid) for sid in store.index.run_stages(run_id).values()]


def test_a_run_with_a_validation_split_records_early_stopping(tmp_path, tiny_sets):
    store, stages = run_tiny(tmp_path, tiny_sets, "data.val_split=0.25")
    for info in stages:
        m, history = info["metrics"], info["history"]
        best = max((h for h in history if "val_acc" in h), key=lambda h: h["val_acc"])
        assert m["test_acc_at_best_val"] == best["test_acc"] and m["val_acc_best"] == best["val_acc"]
    labels = store.labels(store.index.run_stages(store.index.run_ids()[0])[(0, 0)])
    assert len(labels["labels"]) == 240  # noise is drawn on the whole training set, then 60 examples are held out


def test_remedies_run_end_to_end_and_enter_stage_ids_only_when_on(tmp_path, tiny_sets):
    cfg = config_load.load(sets=tiny_sets)
    assert cfg.run_id == config_load.load(sets=[*tiny_sets, "retrain.distill_temperature=4"]).run_id  # the default: no new id
    on = config_load.load(sets=[*tiny_sets, "retrain.distill_alpha=0.5"])
    assert level_key(on, "p", 1)["retrain"] == {"distill_alpha": 0.5}
    assert level_key(cfg, "p", 1)["retrain"] == {}
    plain = run_tiny(tmp_path / "plain", tiny_sets)[1]
    pen = run_tiny(tmp_path / "pen", tiny_sets, "train.distance_penalty=0.01")[1]
    kd = run_tiny(tmp_path / "kd", tiny_sets, "retrain.distill_alpha=0.5")[1]
    assert pen[0]["metrics"]["distance"] < plain[0]["metrics"]["distance"]  # the penalty keeps the weights nearer the init
    assert kd[0]["history"] == plain[0]["history"]  # the dense network has no teacher
    assert kd[1]["metrics"]["test_acc"] != plain[1]["metrics"]["test_acc"] or kd[1]["history"] != plain[1]["history"]


@pytest.mark.parametrize("key, value, message", [
    ("data.val_split", "1", "data.val_split must be in [0, 1)"),
    ("train.distance_penalty", "-1", "train.distance_penalty must be >= 0"),
    ("retrain.distill_alpha", "2", "retrain.distill_alpha must be in [0, 1]"),
    ("retrain.distill_temperature", "0", "retrain.distill_temperature must be > 0"),
])
def test_bad_remedy_settings_are_one_line_errors(key, value, message):
    with pytest.raises(SparseddError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_load.load(sets=[f"{key}={value}"])
