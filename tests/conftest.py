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


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small-tensor tests: one thread is fastest and immune to oversubscribed cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
