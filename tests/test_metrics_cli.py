"""`fairbench metrics FILE` on harness-style CSV, Parquet, name-coded files and bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fairbench.commands.metrics import metrics
from fairbench.datasets.fairvlmed import FairVLMed
from fairbench.metrics import MetricSuite, bootstrap, evaluate

ATTRS = ("race", "gender", "ethnicity", "language")
NAMES = FairVLMed.attributes  # the default dataset's groups name the codes


def _app() -> typer.Typer:
    # A callback keeps typer in sub-command mode, as in fairbench.cli, whatever else is registered.
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    app.command("metrics")(metrics)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["metrics", *map(str, args)])


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    return pd.DataFrame({
        "sample": [f"data_{i:05d}.npz" for i in range(n)],
        "label": y,
        "score": np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1),
        "race": rng.choice(3, n, p=[0.2, 0.3, 0.5]),
        "gender": rng.integers(0, 2, n),
        "ethnicity": rng.choice(2, n, p=[0.8, 0.2]),
        "language": rng.choice(3, n, p=[0.8, 0.1, 0.1]),
    })


def _expected(df: pd.DataFrame, **kw) -> dict:
    return evaluate(df["label"].to_numpy(), df["score"].to_numpy(),
                    {a: df[a].to_numpy() for a in ATTRS}, group_names=NAMES, **kw).to_dict()


def test_json_from_harness_csv(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "predictions_test.csv"
    frame.to_csv(path, index=False)
    result = _run(path, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == _expected(frame)
    assert MetricSuite.from_dict(out).attributes["race"].groups["Black"].code == 1


def test_parquet_names_and_threshold(tmp_path: Path, frame: pd.DataFrame) -> None:
    named = frame.copy()
    named["race"] = named["race"].map({0: "Asian", 1: "Black", 2: "White"})
    path = tmp_path / "preds.parquet"
    named.to_parquet(path)
    result = _run(path, "--json", "--threshold", "0.55")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == _expected(frame, threshold=0.55)


def test_table_output_with_bootstrap(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    result = _run(path, "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in ("ES-AUC ↑", "DPD ↓", "EOD ↓", "Hispanic", "Spanish", "50 resamples"):
        assert needle in text
    auc = evaluate(frame["label"], frame["score"], {}).auc
    assert f"{100 * auc:.2f}" in text


def test_json_bootstrap_matches_library(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    result = _run(path, "--json", "--bootstrap", "30", "--seed", "2", "--attr", "race")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out["attributes"]) == ["race"]
    ref = bootstrap(frame["label"].to_numpy(), frame["score"].to_numpy(), {"race": frame["race"].to_numpy()},
                    n_resamples=30, seed=2, group_names=NAMES)
    assert out["bootstrap"] == json.loads(json.dumps(ref.to_dict()))


def test_custom_columns_and_warnings(tmp_path: Path, frame: pd.DataFrame) -> None:
    df = frame.rename(columns={"label": "y", "score": "p"}).assign(site=frame["race"])
    df.loc[3, "site"] = -1
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    result = _run(path, "--json", "--label-col", "y", "--score-col", "p", "--attr", "site")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sum(g["n"] for g in out["attributes"]["site"]["groups"].values()) == len(df) - 1
    assert "warning: attribute 'site': 1 of 400 rows" in result.stderr


def _bad(tmp_path: Path, frame: pd.DataFrame, edit, name: str = "bad.csv") -> Path:
    df = frame.copy()
    df = edit(df) if edit else df
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("edit", "extra", "message"), [
    (lambda d: d.drop(columns="score"), (), "missing column 'score'"),
    (lambda d: d.drop(columns="label"), (), "missing column 'label'"),
    (lambda d: d.assign(score=d["score"].where(d.index != 16)), (), "row 17: score is NaN"),
    (lambda d: d.astype({"score": object}).assign(score=lambda x: x["score"].where(x.index != 4, "high")),
     (), "row 5: score is 'high', not a finite number"),
    (lambda d: d.assign(label=d["label"].where(d.index != 2, 2)), (),
     "row 3: label is 2; labels must be 0 or 1"),
    (None, ("--attr", "site"), "missing column 'site'"),
    (lambda d: d.assign(race=d["race"].where(d.index != 7, 1.5)), (),
     "row 8: race is 1.5; group codes must be integers"),
    (None, ("--bootstrap", "-1"), "--bootstrap must be >= 0"),
])
def test_bad_files_exit_2_with_one_line(tmp_path: Path, frame: pd.DataFrame, edit, extra, message) -> None:
    result = _run(_bad(tmp_path, frame, edit), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    missing = _run(tmp_path / "nope.csv")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    other = tmp_path / "p.txt"
    other.write_text("label,score\n1,0.5\n")
    wrong = _run(other)
    assert wrong.exit_code == 2 and "use a .csv or .parquet file" in wrong.stderr
    garbage = tmp_path / "p.parquet"
    garbage.write_bytes(b"not parquet at all")
    bad = _run(garbage)
    assert bad.exit_code == 2 and "cannot read as parquet" in bad.stderr
    empty = tmp_path / "e.csv"
    empty.write_text("label,score\n")
    assert _run(empty).exit_code == 2


def test_module_import_stays_light() -> None:
    code = ("import sys, fairbench.commands.metrics; "
            "heavy = [m for m in ('numpy', 'pandas', 'torch', 'rich') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
