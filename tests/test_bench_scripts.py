"""The benchmark scripts import fairbench lazily inside `main()`, so a moved module breaks them only when someone
runs them (bench_resume.py did, after the dataset layer moved). Resolve every fairbench import they make."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
OURS = ("fairbench", "fairbench_methods")


def fairbench_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS
            for alias in node.names]


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_fairbench_import_of_a_bench_script_resolves(script: Path) -> None:
    for module, name in fairbench_imports(script):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule; raises if it does not exist either


def test_the_check_sees_a_broken_import(tmp_path: Path) -> None:
    script = tmp_path / "bench_old.py"
    script.write_text("def main():\n    from fairbench.data import make_synthetic\n")
    (module, name), = fairbench_imports(script)
    with pytest.raises(ImportError):
        importlib.import_module(module)


@pytest.fixture(scope="module")
def gpu_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/gpu_session.sh once, in its CPU modes, with the throughput bench's CPU-mode options: one process start
    serves both tests below (the session passes its arguments on to bench_gpu.py)."""
    out = tmp_path_factory.mktemp("gpu-session")
    # One OpenMP thread, as the test process has (conftest): bench_gpu.py sets its own (--threads 1).
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(BENCH.parent), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    bench_gpu_args = ["--device", "cpu", "--arch", "tiny", "--methods", "clip,fairclip", "--runs-per-gpu", "1,2",
                      "--concurrent-steps", "2", "--threads", "1", "--warmup", "0", "--reps", "1"]
    proc = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), *bench_gpu_args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_bench_gpu_cpu_mode_prints_steps_epoch_and_processes_per_device(gpu_session: Path) -> None:
    """The GPU bench's CPU mode runs the same code paths a GPU session will (only the device differs)."""
    out = (gpu_session / "bench_gpu.txt").read_text()
    for method in ("clip", "fairclip"):
        assert re.search(rf"^tiny\s+{method}\s+off\s+\d+\.\d\s+\d+\.\d", out, re.M), out
    assert re.search(r"trainer epoch of 3 steps [\d.]+ s vs steps alone [\d.]+ s: x[\d.]+", out), out
    assert re.search(r"1 process\(es\) on one device: [\d.]+ steps/s in all = x1\.00", out), out
    assert re.search(r"2 process\(es\) on one device: [\d.]+ steps/s in all = x[\d.]+", out), out


@pytest.mark.slow
def test_gpu_session_runs_both_checks_and_writes_their_outputs(gpu_session: Path) -> None:
    """bench/gpu_session.sh is the one call a session with a GPU makes; here it runs the CPU modes."""
    check = (gpu_session / "gpu_check.txt").read_text()
    for method in ("clip", "fairclip", "fairmoe"):
        assert re.search(rf"^{method}\s+scores: max \|Δp\| ", check, re.M), check
        assert re.search(rf"^{method}\s+race eod\s", check, re.M), check
    assert re.search(r"^tiny\s+clip\s+off\s+\d", (gpu_session / "bench_gpu.txt").read_text(), re.M)
    assert "torch" in (gpu_session / "machine.txt").read_text()


@pytest.mark.slow
def test_bench_loss_terms_prints_dominance_sinkhorn_multiples_and_fol_shares(dataset: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_loss_terms.py"), "--pretrained", "none", "--data",
                           str(dataset)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert len(re.findall(r"dominance at step 1: λ·Sinkhorn / contrastive = [\d.e+-]+; gradient norm ratio = "
                          r"[\d.e+-]+", out)) == 2, out
    assert re.search(r"logit scale 100\.0: contrastive [\d.]+", out), out
    assert re.search(r"group 0: fairbench multiples \{1: \d+", out), out
    for form, terms in (("paper", ("fol_ei", "fol_et", "fol_fi", "fol_ft")), ("release", ("fol_et", "fol_ft"))):
        assert f"fairmoe moe.form={form}" in out
        for term in terms:
            assert re.search(rf"^  {term}\s+all [\d.e+-]+\s+gates [\d.e+-]+$", out, re.M), (term, out)
