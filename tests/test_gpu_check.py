"""benchmarks/gpu_check.py, the GPU script of issue 12, run on the CPU at tiny sizes: a GPU session is
short and lent rarely, so the script must not first fail on its own code there. On a CPU nothing is
captured; every comparison is still made (and equal: the same kernels run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_script_runs_on_a_cpu_at_tiny_sizes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    r = json.loads(out.read_text())
    assert r["device"] == "cpu"
    assert set(r["captured"]) == {"lenet_mnist_fp32", "resnet18_cifar_fp32", "resnet18_cifar_bf16_channels_last"}
    for check in (*r["captured"].values(), r["captured_stacked"], r["side_by_side"]["equality"]):
        assert check["ok"] and check["max_weight_diff"] == 0.0  # eager against eager on a CPU: bit for bit
        assert check.get("captured", False) is False
    assert r["batched_vs_single_max_weight_diff"] and {"fp32_eager_k2", "bf16_channels_last_captured_k2"} <= set(r["side_by_side"])
