"""Issue 12, point 2 on the CPU: K conv nets trained together (each its own execution: weights,
batch-norm statistics, optimizer, data order, augmentation draws; on a GPU each on its own stream)
end exactly as each trained alone, for every conv model at a tiny width, also when resumed."""

from __future__ import annotations

import pytest
import torch

from test_training import _DyingCheckpointer, _Interrupt
from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.models import build_model
from sparsedd.pruning import full_mask, random
from sparsedd.store import FileCheckpointer
from sparsedd.training import TrainData, train
from sparsedd.training.planner import measure_together, train_together

CFG = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=2, batch_size=16, eval_every=1)
K = 3


def setting(name: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 16, 16, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    views = [TrainData(x, (y + k) % 3, y, x[:12], y[:12], torch.arange(0), augment="crop-flip") for k in range(K)]
    models = [build_model(ModelConfig(name, width=2), (3, 16, 16), 3, seed=k) for k in range(K)]
    masks = []
    for k, m in enumerate(models):
        w = {n: p.detach() for n, p in m.named_parameters()}
        masks.append(random(w, full_mask(m, m.prunable_names("all")), fraction=0.3 * k, scope="layer",
                            generator=torch.Generator().manual_seed(k)))
    return models, views, masks


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet101"])
def test_conv_nets_trained_together_end_as_each_trained_alone(name):
    alone, views, masks = setting(name)
    want = [train(m, d, CFG, mk, order_key=(k, "order")) for k, (m, d, mk) in enumerate(zip(alone, views, masks))]
    together, views, masks = setting(name)
    got = train_together(together, views, CFG, masks, order_keys=[(k, "order") for k in range(K)])
    for k in range(K):
        a, b = alone[k].state_dict(), together[k].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a), (name, k)  # batch-norm statistics too
        assert got[k].history == want[k].history and got[k].final == want[k].final
        assert _same_state(got[k].optimizer_state, want[k].optimizer_state)
    assert not torch.equal(together[0].state_dict()[next(iter(masks[1]))], together[1].state_dict()[next(iter(masks[1]))])


def _same_state(a, b) -> bool:
    return a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])


def test_a_resumed_together_computation_ends_as_an_uninterrupted_one(tmp_path):
    ref, views, masks = setting("resnet18")
    want = train_together(ref, views, CFG, masks, order_keys=[(k, "order") for k in range(K)])
    path = tmp_path / "ckpt.pt"
    models, views, masks = setting("resnet18")
    with pytest.raises(_Interrupt):  # 3 steps per epoch, a save after each: the 4th is at epoch 1, step 1
        train_together(models, views, CFG, masks, order_keys=[(k, "order") for k in range(K)],
                       checkpoint=_DyingCheckpointer(path, 4))
    models, views, masks = setting("resnet18")
    got = train_together(models, views, CFG, masks, order_keys=[(k, "order") for k in range(K)],
                         checkpoint=FileCheckpointer(path, 1e9, 1e9))
    for k in range(K):
        a, b = ref[k].state_dict(), models[k].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert got[k].history == want[k].history


def test_the_measurement_times_alone_and_together():
    models, views, _ = setting("vgg16")
    out = measure_together(lambda: build_model(ModelConfig("vgg16", width=2), (3, 16, 16), 3, seed=0), views[0],
                           CFG, k=2, steps=2)
    assert out["single_s"] > 0 and out["together_s"] > 0 and out["pays"] == (out["together_s"] < 0.9 * out["single_s"])


def test_a_conv_run_with_batch_on_trains_seeds_side_by_side_with_the_same_results(tmp_path, shared_mnist):
    from sparsedd.cli import main

    sets = ["data.num_train=120", "data.num_test=40", "model.width=2", "train.epochs=2", "train.batch_size=32",
            "prune.levels=2", "retrain.rewind_iteration=2", "seeds=2"]

    def stages(batch: str) -> dict:
        root = tmp_path / batch
        args = ["run", "--preset", "mnist-conv-quick", "--root", str(root), "--data-dir", str(shared_mnist),
                "--no-progress", "--batch", batch, *[a for s in sets for a in ("--set", s)]]
        assert main(args) == 0
        return {p.parent.name: torch.load(p, weights_only=True)["model"] for p in (root / "stages").glob("*/final.pt")}, \
            sorted(p.parent.name for p in (root / "stages").glob("*/result.pt"))

    alone, no_batches = stages("off")
    together, batches = stages("on")
    assert not no_batches and len(batches) == 3  # levels 0, 1 and 2, each one computation of both seeds
    assert alone.keys() == together.keys() and len(alone) >= 2 * 3
    for sid, state in alone.items():
        assert all(torch.equal(v, together[sid][n]) for n, v in state.items()), sid
