"""Shared test helpers: a small synthetic FairVLMed and fast trainer settings."""

from __future__ import annotations

from pathlib import Path

SMALL = {"n_train": 96, "n_val": 48, "n_test": 64, "size": 64, "seed": 0}


def small_synthetic(root: Path) -> Path:
    from fairbench.datasets.fairvlmed.synth import make_synthetic

    path = root / "synth-small"
    if not path.exists():
        make_synthetic(path, **SMALL)
    return path


def copy_dataset(source: Path, target: Path) -> Path:
    """A private copy of a dataset folder, for a test that damages it."""
    import shutil

    shutil.copytree(source, target)
    return target


def rewrite_summaries(root: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Replace the dataset's summary CSV with `header` and `rows`."""
    import csv

    path = root / "gpt-4_summarized_notes.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def summary_rows(root: Path) -> list[list[str]]:
    """The rows (file name, note, summary) of the synthetic dataset's summary CSV, without its header."""
    import csv

    with open(root / "gpt-4_summarized_notes.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def tiny_tokenize(texts: list[str]):
    """A stand-in tokenizer (first 8 characters as codes), so data tests need no CLIP tokenizer."""
    import torch

    return torch.tensor([[ord(c) % 256 for c in (t + " " * 8)[:8]] for t in texts], dtype=torch.long)


def load_small(root: Path, cache: Path, text_source: str = "gpt4"):
    from fairbench.datasets.fairvlmed.load import load_fairvlmed

    return load_fairvlmed(root, image_size=16, tokenize=tiny_tokenize, tokenizer_key="tiny-test",
                          text_source=text_source, cache_dir=cache)


def unwritable(path: Path):
    """A context manager under which the folder `path` refuses new files, as a read-only or immutable folder does.

    As root, permissions do not bind, so it sets the immutable attribute (`chattr +i`, which binds root too); as
    another user it removes write permission. Skips the test where neither is possible."""
    import contextlib
    import os
    import shutil
    import subprocess

    import pytest

    @contextlib.contextmanager
    def block():
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555)
            try:
                yield "chmod a-w"
            finally:
                path.chmod(mode)
            return
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without a working `chattr +i`: no way to make a folder refuse root")
        try:
            yield "chattr +i"
        finally:
            subprocess.run([chattr, "-i", str(path)], capture_output=True)

    return block()


def slurm_unavailable() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    import importlib.util
    import shutil
    import subprocess

    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install 'fairbench-medvlm[slurm]')"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM on this machine (sinfo/sbatch not found); sudo scripts/slurm_local.sh starts one"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer ({exc}); sudo scripts/slurm_local.sh starts it"
    states = nodes.stdout.split()
    if nodes.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return (f"the SLURM cluster is down (sinfo: {(nodes.stdout + nodes.stderr).strip() or 'no nodes'}); "
                "sudo scripts/slurm_local.sh starts it")
    if accounting.returncode != 0:
        return (f"sacct fails ({accounting.stderr.strip()}): without accounting submitit never notices a "
                "cancelled job; sudo scripts/slurm_local.sh sets up slurmdbd")
    return None
