"""Test-wide settings: offline hub, few threads, and an isolated fairbench cache per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from fairbench.registry import load_builtin_methods  # noqa: E402

load_builtin_methods()  # makes `fairbench_methods` importable from this checkout before test modules import it


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep tests away from the user's ~/.cache/fairbench and $FAIRBENCH_DATA."""
    old = {k: os.environ.get(k) for k in ("FAIRBENCH_CACHE", "FAIRBENCH_DATA", "FAIRBENCH_PLUGINS")}
    os.environ["FAIRBENCH_CACHE"] = str(tmp_path_factory.mktemp("fairbench-cache"))
    os.environ.pop("FAIRBENCH_DATA", None)
    os.environ.pop("FAIRBENCH_PLUGINS", None)
    try:
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))
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


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small-tensor tests: one thread is fastest and immune to oversubscribed cores."""
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
