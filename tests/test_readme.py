"""The README's "add your own method" example is real: it registers, trains and reaches the table."""

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import small_synthetic

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_plugin_example_runs_end_to_end(tmp_path):
    (example,) = [b for b in readme_python_blocks() if "register_method" in b]
    plugin = tmp_path / "my_method.py"
    plugin.write_text(example)
    data = small_synthetic(tmp_path)
    out = tmp_path / "results"
    r = CliRunner().invoke(app, ["run", "--plugin", str(plugin), "--method", "clip-groupmean", "--attr", "race",
                                 "--seeds", "1", "--data", str(data), "--out", str(out), "--epochs", "1",
                                 "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"])
    assert r.exit_code == 0, r.output
    (result,) = out.rglob("result.json")
    record = json.loads(result.read_text())
    assert record["method"] == "clip-groupmean" and record["attribute"] == "race"
    history = json.loads((result.parent / "history.json").read_text())
    assert set(history[0]["train"]) == {"contrastive", "group_gap", "loss"}
    table = CliRunner().invoke(app, ["table", "--out", str(out), "--attr", "race"])
    assert table.exit_code == 0 and "clip-groupmean" in table.output


def test_readme_commands_match_ci():
    """.ci/run must call the README's test command."""
    text = README.read_text()
    test_cmd = re.search(r"pip install -e '\.\[test\]' && (.+)", text).group(1).strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_cmd in ci
