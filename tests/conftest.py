"""Shared fixtures: a private cache and results root per test session, tiny configs, the shared MNIST."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is as fast, and it avoids oversubscribing shared cores
# (measured here: 5 s instead of 63 s for tests/test_imp.py while another job used the CPU).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated data sets go to a temporary cache, never the user's."""
    old = os.environ.get("SPARSEDD_CACHE")
    os.environ["SPARSEDD_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SPARSEDD_CACHE", None)
    else:
        os.environ["SPARSEDD_CACHE"] = old


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one torch thread. A command run in the test process (``--threads 3``, a sweep's
    inline tasks) sets torch's thread count for the whole process, and a later bit-for-bit comparison in
    the same process then reduces in another order: tests/test_sweep.py's one-by-one references differed
    from the sweep's workers in the last bits whenever an earlier test had left 2 or 3 threads (issue 23)."""
    torch.set_num_threads(1)
    yield


# A run small enough for tests: 300 MNIST-1D examples, a small MLP, a few epochs and levels.
TINY = [
    "data.num_train=240", "data.num_test=120", "model.hidden=[32,32]", "train.epochs=3",
    "train.batch_size=32", "train.eval_every=1", "prune.levels=2", "prune.fraction=0.2", "data.noise=0.2",
]


@pytest.fixture
def tiny_sets() -> list[str]:
    return list(TINY)


@pytest.fixture
def shared_mnist() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip("../shared/data/mnist is not present")
    return SHARED_DATA


@pytest.fixture
def http_dir(tmp_path):
    """A folder served over http on 127.0.0.1 (random port); yields (folder, base url)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# --- test tiers (issue 25): `-m "not slow and not subprocess and not browser and not gpu"` is the inner loop
# Node ids (file::test, every parametrization), so that a test file keeps no list of its own.
# SLOW: 3 s or more in a fresh-clone run on the 2-core build machine (`bash scripts/test.sh --durations=0`).
SLOW = (
    "test_analysis.py::test_redense_gives_back_pruned_weights",
    "test_bad_input.py::test_random_malformed_configs_and_sweeps",
    "test_batched.py::test_an_interrupted_level_resumes_the_way_it_started_whatever_the_timing_says_then",
    "test_batched.py::test_jobs_that_could_stack_or_run_compact_take_the_faster_way_timed_on_copies",
    "test_batched.py::test_pipeline_batched_seeds_equal_one_by_one",
    "test_benchsuite.py::test_bench_runs_our_columns_on_the_threads_run_uses",
    "test_benchsuite.py::test_bench_suite_captured_columns_where_asked",
    "test_benchsuite.py::test_bench_suite_quick_json_shape",
    "test_benchsuite.py::test_bench_suite_table_and_bad_input",
    "test_cifarn.py::test_a_tiny_run_with_cifar10n_worst",
    "test_api.py::test_a_run_and_its_analyses_leave_the_callers_global_rng_alone",
    "test_claims.py::test_claims_command_end_to_end",
    "test_claims.py::test_report_show_and_phases_after_claims",
    "test_claims.py::test_claims_list_the_levels_that_ended_unstable_and_drop_them_as_another_result",
    "test_claims.py::test_a_damaged_claims_result_is_named_in_the_report_not_shown_and_doctor_sets_it_aside",
    "test_claims.py::test_claims_say_each_level_their_analyses_compute",  # (the claims' runs, where it runs first)
    "test_dense_control_select.py::test_dense_control_trains_the_dense_recipe_at_matched_width_seeded_per_level",
    "test_dense_control_select.py::test_dense_control_trains_a_levels_seeds_stacked_as_it_would_one_by_one",
    "test_dense_control_select.py::test_select_on_a_run_with_a_validation_split_and_the_one_line_refusal_without",
    "test_distance.py::test_a_network_that_learns_nothing_has_distance_zero_at_every_level",
    "test_distributed.py::test_two_processes_match_one",
    "test_export.py::test_bad_exports_are_one_line_and_write_nothing",
    "test_export.py::test_every_level_loads_back_with_its_stored_test_accuracy",
    "test_export.py::test_mlflow_gets_every_level_as_a_step_once",
    "test_export.py::test_the_provenance_record_names_the_run_stage_files_and_metrics",
    "test_export.py::test_wandb_offline_gets_every_level_as_a_step_once",
    "test_gpu_check.py::test_the_gpu_script_runs_on_a_cpu_at_tiny_sizes",
    "test_image_e2e.py::test_cifar_models_end_to_end",
    "test_image_e2e.py::test_tinyimagenet_resnet101_end_to_end",
    "test_image_models.py::test_masked_training_step_keeps_pruned_weights_zero",
    "test_index.py::test_a_locked_index_is_waited_for_on_the_terminal_then_given_up",
    "test_index.py::test_a_read_only_store_is_listed_shown_plotted_reported_loaded_and_analyzed_creating_nothing",
    "test_index.py::test_a_stage_another_process_computes_is_waited_for_then_given_up",
    "test_memorization_stability.py::test_memorization_matches_the_stored_weights_and_labels",  # the tiny runs
    "test_memorization_stability.py::test_stability_stacked_equals_one_by_one_and_the_report_draws_both",
    "test_merge.py::test_a_damaged_file_in_a_source_is_reported_and_its_stage_skipped",
    "test_merge.py::test_a_partial_run_stays_partial_and_the_more_complete_status_is_kept",
    "test_merge.py::test_results_only_brings_the_results_and_a_run_computes_the_weights_again",
    "test_merge.py::test_two_stores_merged_into_a_third_show_the_same_curves_and_merging_again_changes_nothing",
    "test_notebook.py::test_the_tutorial_notebook_runs",
    "test_parity.py::test_resnet18_prunes_as_the_paper_code",
    "test_progress.py::test_a_run_without_a_terminal_logs_a_line_per_stage",
    "test_prune_variants.py::test_vgg16_slimming_end_to_end",
    "test_pruning_methods.py::test_toy_method_with_its_own_input_runs_end_to_end",
    "test_report.py::test_report_files",
    "test_resume.py::test_sigkill_then_resume_gives_identical_weights",
    "test_signals.py::test_sigterm_to_a_run_keeps_its_checkpoint_and_marks_it_partial",
    "test_signals.py::test_sigterm_to_a_sweep_driver_stops_its_workers",
    "test_slurm.py::test_a_slurm_sweep_on_this_machine_equals_the_same_sweep_inline_and_resumes",
    "test_sweep.py::test_failed_run_is_reported_retried_and_does_not_stop_the_others",
    "test_sweep.py::test_four_concurrent_writers_lose_nothing",
    "test_sweep.py::test_local_sweep_equals_one_by_one_shares_dense_and_resumes",
    "test_sweep.py::test_ray_sweep_equals_one_by_one_and_shares_with_local",
    "test_sweep.py::test_stage_lock_excludes_other_processes_and_dies_with_its_holder",
    "test_sweep.py::test_worker_killed_mid_run_then_sweep_completes",
    "test_together.py::test_a_conv_run_with_batch_on_trains_seeds_side_by_side_with_the_same_results",
    "test_together.py::test_conv_nets_trained_together_end_as_each_trained_alone",
    "test_user_model_data.py::test_a_users_builder_runs_end_to_end_and_its_source_is_in_the_stage_ids",
    "test_unstable.py::test_results_phases_plots_and_report_know_the_unstable_level",
    "test_vit.py::test_a_tiny_run_keeps_pruned_weights_zero",
)
SUBPROCESS = (  # starts other processes (workers, a CLI, torchrun, a lock holder, a browser)
    "test_bad_input.py::test_random_malformed_configs_and_sweeps",
    "test_cli.py::test_console_script_and_default_preset_parse",
    "test_distributed.py::test_two_processes_match_one",
    "test_export.py::test_wandb_offline_gets_every_level_as_a_step_once",  # W&B's wandb-core service
    "test_index.py::test_a_read_only_store_is_listed_shown_plotted_reported_loaded_and_analyzed_creating_nothing",
    "test_index.py::test_a_locked_index_is_waited_for_on_the_terminal_then_given_up",
    "test_index.py::test_a_short_index_wait_is_said_and_then_the_command_goes_on",
    "test_index.py::test_a_stage_another_process_computes_is_waited_for_then_given_up",
    "test_index.py::test_doctor_leaves_a_stage_being_computed_alone",
    "test_notebook.py::test_the_tutorial_notebook_runs",
    "test_progress.py::test_a_run_without_a_terminal_logs_a_line_per_stage",
    "test_pruning_methods.py::test_building_a_config_imports_no_torch",
    "test_report.py::test_report_in_headless_chromium",
    "test_resume.py::test_sigkill_then_resume_gives_identical_weights",
    "test_signals.py::test_sigterm_to_a_sweep_driver_stops_its_workers",
    "test_signals.py::test_sigterm_to_a_run_keeps_its_checkpoint_and_marks_it_partial",
    "test_sweep.py::test_local_sweep_equals_one_by_one_shares_dense_and_resumes",
    "test_sweep.py::test_failed_run_is_reported_retried_and_does_not_stop_the_others",
    "test_sweep.py::test_ray_sweep_equals_one_by_one_and_shares_with_local",
    "test_sweep.py::test_worker_killed_mid_run_then_sweep_completes",
    "test_sweep.py::test_four_concurrent_writers_lose_nothing",
    "test_sweep.py::test_stage_lock_excludes_other_processes_and_dies_with_its_holder",
    "test_slurm.py::test_a_slurm_sweep_on_this_machine_equals_the_same_sweep_inline_and_resumes",
    "test_slurm.py::test_stopping_the_sweep_cancels_its_jobs",
)
BROWSER = ("test_report.py::test_report_in_headless_chromium",)
GPU = ("test_augment.py::test_same_result_on_cuda",)
TIERS = {"slow": SLOW, "subprocess": SUBPROCESS, "browser": BROWSER, "gpu": GPU}


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.split("[")[0].removeprefix("tests/")
        for marker, nodes in TIERS.items():
            if node in nodes:
                item.add_marker(getattr(pytest.mark, marker))
    # The files with slow tests first (a stable sort: the files and their tests otherwise in their order):
    # in two processes (scripts/test.sh) the long tests then start early and short ones fill in beside
    # them, where the files' own order left one process running the sweep tests alone at the end.
    slow_files = {node.split("::")[0] for node in SLOW}
    items.sort(key=lambda item: item.nodeid.split("::")[0].removeprefix("tests/") not in slow_files)
