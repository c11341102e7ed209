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
