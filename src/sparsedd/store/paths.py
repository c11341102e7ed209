"""Every file name of the store, in one place.

These names are the on-disk format: a store written by an older version is read and resumed by
this one only while they stay the same, so rename nothing here.
"""

from __future__ import annotations

INDEX = "index.sqlite"
STAGES = "stages"  # stages/<id>/ holds the files below
RUNS = "runs"  # runs/<id>/config.json
LOCKS = "locks"  # locks/<id>.lock
MIGRATIONS = "migrations.json"  # the one-time corrections already applied to this store
DATA = "data"  # data/<data key>.json: the fingerprint of the data this store's results were made with
CLAIMS = "claims"  # claims/<sweep id>.json: a `sparsedd claims` result
SWEEPS = "sweeps"  # sweeps/<sweep id>/: a sweep's record, logs, status and report
MLRUNS = "mlruns"  # the MLflow file store `sparsedd export --to mlflow` logs to by default
WANDB = "wandb"  # W&B's own folder of offline runs (`export --to wandb`; W&B names it) and our records there

# in a stage folder
STAGE_KEY = "stage.json"  # what the stage is (its id is this key's hash)
CHECKPOINT = "checkpoint.pt"  # while it trains
CHECKPOINT_BEFORE = "checkpoint.prev.pt"  # the checkpoint before it, used when the last one is damaged
FINAL = "final.pt"  # weights at the end (a level's also its mask and optimizer state)
DONE = "done.json"  # written last: its presence means the stage is complete
INIT = "init.pt"  # the dense stage's initial weights
LABELS = "labels.pt"  # the dense stage's noisy labels
REWIND = "weights.pt"  # a rewind stage's weights
BATCH_POINTER = "batch.json"  # a level stage trained in a batch: the batch's id
BATCH_RESULT = "result.pt"  # in a batch's folder: every member stage's outcome
RESULTS_ONLY = "results-only.json"  # a stage merged without its weights (`sparsedd merge --results-only`)

# in a run folder
RUN_CONFIG = "config.json"

# beside any file written by store/files.py (stage files, run configs, data caches)
CHECKSUM = ".sha256"  # NAME.sha256: {"sha256": ..., "bytes": ...} of NAME as written
DAMAGED = ".damaged"  # NAME.damaged: a damaged file set aside (never read again)
