"""Test-wide settings: offline hub, one torch thread, an isolated fairbench cache per session, short pretraining,
a small default dataset, and the small synthetic FairVLMed built once per session (`dataset`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from fairbench.registry import load_builtin_methods  # noqa: E402

load_builtin_methods()  # makes `fairbench_methods` importable from this checkout before test modules import it

# Torch threads of the test process. The tests' tensors are small (the `tiny` CLIP, batches of 16): on two idle
# cores a second thread gains little, and whenever another process holds a core each op's threads wait for each
# other (a training step of `tiny` took 0.2–0.3 s on one thread, 0.7–2.8 s on two, while other jobs ran on the
# 2-core machine).
# Subprocesses keep their own count. FAIRBENCH_TEST_THREADS=N compares (bench/bench_tests.py --threads 1,2).
THREADS_ENV = "FAIRBENCH_TEST_THREADS"
_threads = os.environ.get(THREADS_ENV, "1")
if not _threads.isdigit() or int(_threads) < 1:
    raise pytest.UsageError(f"{THREADS_ENV}={_threads!r}: give a whole number of torch threads, at least 1")
TEST_THREADS = int(_threads)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep tests away from the user's ~/.cache/fairbench and $FAIRBENCH_DATA."""
    old = {k: os.environ.get(k) for k in ("FAIRBENCH_CACHE", "FAIRBENCH_DATA", "FAIRBENCH_PLUGINS")}
    os.environ["FAIRBENCH_CACHE"] = str(tmp_path_factory.mktemp("fairbench-cache"))
    os.environ.pop("FAIRBENCH_DATA", None)
    os.environ.pop("FAIRBENCH_PLUGINS", None)
    try:
        import torch

        torch.set_num_threads(TEST_THREADS)
    except ImportError:  # pragma: no cover
        pass
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _short_pretraining():
    """Runs of `tiny` start from a checkpoint pretrained once per cache; in tests that pretraining is a few steps
    on a small pretraining set, so it costs seconds, not the demo's minute."""
    from fairbench.datasets.fairvlmed import synth
    from fairbench.training import pretrain

    recipe, params = pretrain.RECIPE, dict(synth.PRETRAINING)
    pretrain.RECIPE = pretrain.PretrainRecipe(epochs=1, batch_size=16, warmup_steps=0, max_steps_per_epoch=3)
    synth.PRETRAINING.update(n_train=48, n_val=16, n_test=4, size=32)
    yield
    pretrain.RECIPE = recipe
    synth.PRETRAINING.clear()
    synth.PRETRAINING.update(params)


@pytest.fixture(scope="session", autouse=True)
def _small_default_dataset():
    """A run without --data (dry runs, option errors) resolves the default synthetic dataset, generated once per
    cache: in tests it is the small set's size (a fraction of a second), not the demo's 2,900 samples (~15 s)."""
    from fairbench.datasets.fairvlmed import synth
    from tests.helpers import SMALL

    params = dict(synth.DEFAULTS)
    synth.DEFAULTS.update(SMALL)
    yield
    synth.DEFAULTS.clear()
    synth.DEFAULTS.update(params)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic FairVLMed (tests/helpers.py SMALL), built once per session and shared by every test that
    trains or plans on it; its image and token caches are built once too. Read-only: a test that changes data
    files makes its own (copy it into tmp_path). Checked at the end: a changed file fails the session."""
    from tests.helpers import small_synthetic

    path = small_synthetic(tmp_path_factory.mktemp("shared-data"))
    before = _tree_digest(path)
    yield path
    after = _tree_digest(path)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, (f"a test changed the shared `dataset` fixture ({', '.join(changed[:5])}); a test that "
                         "writes into its data must copy it into its own tmp_path first")


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module whatever FAIRBENCH_TEST_THREADS says: modules of many small-tensor tests (one thread
    is fastest and immune to oversubscribed cores) and tests that check the thread count a launcher passes on."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fairbench_logger_propagates():
    """`fairbench run` owns its process's console: it stops the `fairbench` logger propagating to root handlers.
    In-process CLI runs (module fixtures included) would leave it so for later tests, whose `caplog` listens at the
    root: every test starts with the logger as a fresh process has it."""
    import logging

    logger = logging.getLogger("fairbench")
    logger.handlers, logger.propagate = [], True
    logger.setLevel(logging.NOTSET)
    yield
