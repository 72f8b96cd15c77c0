"""The README's "add your own method" and "add your own dataset" examples are real: they register, train and
reach the table."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_plugin_example_runs_end_to_end(dataset, tmp_path):
    (example,) = [b for b in readme_python_blocks() if "register_method" in b]
    plugin = tmp_path / "my_method.py"
    plugin.write_text(example)
    out = tmp_path / "results"
    r = CliRunner().invoke(app, ["run", "--plugin", str(plugin), "--method", "clip-groupmean", "--attr", "race",
                                 "--seeds", "1", "--data", str(dataset), "--out", str(out), "--epochs", "1",
                                 "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"])
    assert r.exit_code == 0, r.output
    (result,) = out.rglob("result.json")
    record = json.loads(result.read_text())
    assert record["method"] == "clip-groupmean" and record["attribute"] == "race"
    history = json.loads((result.parent / "history.json").read_text())
    assert set(history[0]["train"]) == {"contrastive", "group_gap", "loss"}
    table = CliRunner().invoke(app, ["table", "--out", str(out), "--attr", "race"])
    assert table.exit_code == 0 and "clip-groupmean" in table.output


def write_derm(root: Path) -> Path:
    """The folder layout the README's dataset example reads: RGB images whose red channel carries the label."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 24), ("test", 32)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 120, (n, 20, 28, 3)).astype(np.uint8)
        images[..., 0] += (100 * labels).astype(np.uint8)[:, None, None]
        texts = np.array(["a melanoma" if y else "a benign nevus" for y in labels])
        root.mkdir(parents=True, exist_ok=True)
        np.savez(root / f"{split}.npz", images=images, texts=texts, labels=labels, sex=rng.integers(0, 2, n),
                 skin_type=rng.integers(0, 3, n))
    return root


@pytest.mark.slow
def test_readme_dataset_example_runs_end_to_end(tmp_path):
    (example,) = [b for b in readme_python_blocks() if "register_dataset" in b]
    plugin = tmp_path / "my_dataset.py"
    plugin.write_text(example)
    data = write_derm(tmp_path / "derm")
    out = tmp_path / "results"
    r = CliRunner().invoke(app, ["run", "--plugin", str(plugin), "--dataset", "derm", "--data", str(data),
                                 "--method", "clip,fairclip", "--attr", "skin_type", "--seeds", "1", "--out", str(out),
                                 "--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"])
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))]
    assert len(records) == 2 and all(rec["dataset"]["name"] == "derm" for rec in records)
    assert list(records[0]["metrics"]["test"]["attributes"]["skin_type"]["groups"]) == ["I-II", "III-IV", "V-VI"]
    table = CliRunner().invoke(app, ["table", "--out", str(out), "--dataset", "derm", "--attr", "skin_type"])
    assert table.exit_code == 0 and "fairclip" in table.output, table.output
    (preds,) = [p for p in out.rglob("predictions_test.csv") if "/clip/" in str(p)]
    metrics = CliRunner().invoke(app, ["metrics", str(preds), "--plugin", str(plugin), "--dataset", "derm"])
    assert metrics.exit_code == 0 and "V-VI" in metrics.output and "female" in metrics.output, metrics.output


def test_readme_commands_match_ci():
    """.ci/run must call the README's test command."""
    text = README.read_text()
    test_cmd = re.search(r"pip install -e '\.\[test\]' && (.+)", text).group(1).strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_cmd in ci
