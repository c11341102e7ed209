"""`sparsedd bench --quick`: the reference benchmark runs end to end on tiny sizes (no timing asserted)."""

import json

import pytest

from sparsedd.cli import main


def test_bench_suite_quick_json_shape(capsys, tmp_path, shared_mnist):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--format", "json", "--data-dir", str(shared_mnist), "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == r
    for key in ("lenet", "mnist1d_mlp"):
        m = r[key]
        assert {"reference_s", "single_s", "batched_s", "sparse_s"} <= set(m)
        assert set(m["batched_s"]) == {"8", "32"} and all(v > 0 for v in m["batched_s"].values())
        assert m["reference_s"] > 0 and m["single_s"] > 0 and m["sparse_s"] > 0
        assert abs(m["sparse_density"] - 0.012) < 0.001  # 98.8% sparsity
    levels = r["lenet"]["levels"]
    assert [lv["level"] for lv in levels] == list(range(25))
    assert abs(levels[24]["density"] - 0.8 ** 24) < 1e-3 and levels[0]["density"] == 1.0
    assert r["curve"]["reference_s"] == 25 * r["lenet"]["reference_s"]
    assert r["curve"]["ours_s"] == sum(lv["s"] for lv in levels)
    assert r["meta"]["quick"] and r["meta"]["mnist_real_data"]


def test_bench_suite_table_and_bad_input(capsys):
    assert main(["bench", "--quick", "--rounds", "1"]) == 0  # synthetic MNIST-shaped data without --data-dir
    text = capsys.readouterr().out
    assert "(a) reference" in text and "targets:" in text and "(e) LeNet curve" in text
    assert "captured as CUDA graphs" not in text  # no GPU: no captured columns unless asked for
    with pytest.raises(SystemExit) as e:  # (argparse's: one line, exit 2, as every bounded flag)
        main(["bench", "--quick", "--steps", "1"])
    assert e.value.code == 2 and "argument --steps: expected an integer in [2, 100000]" in capsys.readouterr().err
    assert main(["bench", "--quick", "--warmup", "1"]) == 2  # (found by audit: accepted, and meant nothing)
    assert "--batches and --warmup apply to `bench --preset NAME` only" in capsys.readouterr().err
    assert main(["bench", "--set", "train.lr=1"]) == 2


def test_bench_suite_captured_columns_where_asked(capsys):
    # on a CPU the graph's static step runs eagerly (said once per training): the columns' code path, no meaning
    assert main(["bench", "--quick", "--rounds", "1", "--capture", "on", "--format", "json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert "capture needs a CUDA device; training eagerly" in captured.err and r["meta"]["captured"]
    for key in ("lenet", "mnist1d_mlp"):
        m = r[key]
        assert m["captured_s"]["single"] > 0 and set(m["captured_s"]["batched"]) == {"8", "32"}
        assert m["captured_speedup_over_eager"]["single"] == m["single_s"] / m["captured_s"]["single"]
        assert m["ratios_to_reference"]["captured"]["batched"]["8"] == m["reference_s"] / m["captured_s"]["batched"]["8"]
    from sparsedd.bench.suite import format_table

    assert "captured as CUDA graphs (no GPU: eager):" in format_table(r)


def test_busy_cores_keeps_other_processes_busy_and_stops_them():
    import os

    from sparsedd.bench.suite import busy_cores

    def children() -> set[int]:
        found = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(pid))
        return found

    before = children()
    with busy_cores(2):
        during = children() - before
        assert len(during) == 2
    assert not (children() & during)


def test_bench_runs_our_columns_on_the_threads_run_uses(capsys):
    assert main(["bench", "--quick", "--rounds", "1", "--format", "json", "--busy", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["meta"]["threads"] == 1 and r["meta"]["busy_processes"] == 1  # `sparsedd run`'s default for MLPs
    assert r["lenet"]["threads"] == {"ours": 1, "reference": r["meta"]["reference_threads"]}
    assert main(["bench", "--quick", "--rounds", "1", "--format", "json", "--threads", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["meta"]["threads"] == r["meta"]["reference_threads"] == 2
    import pytest

    with pytest.raises(SystemExit) as exit_:  # argparse's own refusal: one line, exit code 2
        main(["bench", "--busy", "-1"])
    assert exit_.value.code == 2 and "--busy" in capsys.readouterr().err
