"""`fairbench table`: numbers, markers, flags and separations checked against the result files themselves."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.report.load import load_results
from fairbench.report.paper import PaperTables
from fairbench.report.render import render_csv, render_latex, render_markdown, render_terminal
from fairbench.report.tables import build_tables
from tests.helpers import build_results

PAPER_CSV = Path(__file__).resolve().parents[1] / "results" / "paper" / "fair-moe-tables.csv"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def loaded(root: Path):
    return load_results(root)


def _values(root: Path, method: str, attr_dir: str, metric: str, attr: str, lam: float | None = None,
            dataset: str = "fairvlmed", selection: str = "val") -> dict[int, float]:
    """Per-seed metric values read straight from the result.json files (the reference)."""
    out = {}
    for path in sorted((root / dataset / method / "b16" / attr_dir).rglob("result.json")):
        rec = json.loads(path.read_text())
        if rec["selection"]["rule"] != selection:
            continue
        if lam is not None and rec["config"]["method_settings"]["lambda"] != lam:
            continue
        out[rec["seed"]] = rec["metrics"]["test"]["attributes"][attr][metric]
    return out


def _md(text: str) -> str:
    """Markdown with the column padding collapsed, so cells can be matched as `| a | b |`."""
    return re.sub(r" *\| *", " | ", text)


def _row(table, label: str):
    return next(r for r in table.rows if r.label == label)


def _table(tables, attribute: str, dataset: str = "fairvlmed", selection: str = "val"):
    return next(t for t in tables if t.attribute == attribute and t.dataset == dataset and t.selection == selection)


def test_mean_and_sample_std_match_result_files(root, loaded):
    tables = build_tables(loaded.frame)
    race = _table(tables, "race")
    ref = _values(root, "fairclip", "race", "es_auc", "race", lam=1e-5)
    assert sorted(ref) == [0, 1, 2]
    cell = _row(race, "fairclip [lambda=1e-05]").cells["es_auc"]
    assert cell.mean == pytest.approx(100 * statistics.mean(ref.values()))
    assert cell.std == pytest.approx(100 * statistics.stdev(ref.values()))  # ddof = 1
    assert cell.n == 3
    # clip trains on no attribute: its runs are evaluated on race and appear in the race table.
    clip = _row(race, "clip").cells["dpd"]
    assert clip.mean == pytest.approx(100 * statistics.mean(_values(root, "clip", "none", "dpd", "race").values()))
    assert "ddof = 1" in race.caption


def test_best_marker_follows_direction(loaded):
    race = _table(build_tables(loaded.frame), "race")
    for key, higher in (("es_auc", True), ("dpd", False)):
        means = {r.label: r.cells[key].mean for r in race.rows}
        best = (max if higher else min)(means, key=means.get)
        marked = [r.label for r in race.rows if r.cells[key].best]
        assert marked == [best]
    md = render_markdown([race])
    best_row = next(r for r in race.rows if r.cells["es_auc"].best)
    c = best_row.cells["es_auc"]
    assert f"**{c.mean:.2f} ± {c.std:.2f}**" in md
    assert md.count("**") == 2 * sum(cell.best for r in race.rows for cell in r.cells.values())
    assert f"{c.mean:.2f} ± {c.std:.2f}*" in render_terminal([race])


def test_missing_seed_flagged_and_n_shown(loaded):
    race = _table(build_tables(loaded.frame), "race")
    moe = _row(race, "fairmoe")
    assert moe.seeds == (0, 2)
    assert "missing 1" in moe.flag
    assert not _row(race, "clip").flag
    assert any("fairmoe/b16" in n and "missing 1" in n for n in race.notes)
    md = _md(render_markdown([race]))
    assert "| fairmoe | b16 | 2 ⚠ |" in md
    assert "| clip | b16 | 3 |" in md


def test_config_variants_are_separate_rows_with_note(loaded):
    race = _table(build_tables(loaded.frame), "race")
    labels = [r.label for r in race.rows]
    assert "fairclip [lambda=1e-05]" in labels and "fairclip [lambda=0.0001]" in labels
    assert "fairclip" not in labels
    assert any("not merged" in n for n in race.notes)


def test_synthetic_real_and_selection_rules_never_share_a_table(loaded):
    tables = build_tables(loaded.frame)
    keys = {(t.dataset, t.selection) for t in tables}
    assert keys == {("fairvlmed", "val"), ("fairvlmed", "test"), ("synthetic", "val")}
    for t in tables:
        assert ("SYNTHETIC" in t.title) == t.synthetic
        assert ("best TEST AUC" in t.title) == (t.selection == "test")
        assert ("best validation AUC" in t.title) == (t.selection == "val")
        archs = {r.arch for r in t.rows}
        assert archs == ({"tiny"} if t.synthetic else {"b16"})
    test_sel = _table(tables, "race", selection="test")
    assert [r.seeds for r in test_sel.rows] == [(0,)]
    assert math.isnan(test_sel.rows[0].cells["auc"].std)  # one seed: no std, shown as "–"
    assert "optimistic" in " ".join(test_sel.notes)


def test_paper_comparison_values_and_difference(loaded):
    paper = PaperTables.load(PAPER_CSV)
    race = _table(build_tables(loaded.frame, paper=paper, attrs=["race"]), "race")
    ref = pd.read_csv(PAPER_CSV)
    pub = ref[(ref.table == 1) & (ref.attribute == "race") & (ref.method == "clip") & (ref.arch == "b16")
              & (ref.metric == "ES-AUC")].iloc[0]
    cell = _row(race, "clip").cells["es_auc"]
    assert (cell.paper.mean, cell.paper.std, cell.paper.table) == (pub["mean"], pub["std"], 1)
    assert cell.diff == pytest.approx(cell.mean - pub["mean"])
    md = _md(render_markdown([race]))
    assert f"{pub['mean']:.2f} ± {pub['std']:.2f} | {cell.diff:+.2f} |" in md
    assert "best TEST AUC" in " ".join(race.notes)  # warns that the paper used test selection
    wide = pd.read_csv(io.StringIO(render_csv([race])))
    clip = wide[wide.method == "clip"].iloc[0]
    assert clip.col1 == "es_auc" and clip.col1_paper_mean == pub["mean"]
    assert clip.col1_diff == pytest.approx(cell.diff, abs=1e-5)


def test_paper_lookup_maps_paper_arch_names():
    frame = pd.DataFrame({"table": [4, 1], "attribute": ["race"] * 2, "method": ["fairmoe"] * 2,
                          "arch": ["ViT-B/16", "ViT-B/16"], "metric": ["ES-AUC"] * 2, "mean": [70.9, 69.63],
                          "std": [float("nan"), 1.21]})
    paper = PaperTables(frame, "inline")
    value = paper.get("race", "fairmoe", "b16", "es_auc")
    assert (value.mean, value.table) == (69.63, 1)  # Table 1 preferred over Table 4
    assert paper.get("race", "fairmoe", "l14", "es_auc") is None


def test_ablation_layout_columns_are_attributes(root, loaded):
    (table,) = [t for t in build_tables(loaded.frame, layout="ablation") if t.dataset == "fairvlmed"
                and t.selection == "val"]
    assert [c.key for c in table.columns] == ["race", "gender", "ethnicity", "language"]
    moe = _row(table, "fairmoe")
    assert set(moe.cells) == {"race"}  # trained on race only
    ref = _values(root, "fairclip", "gender", "es_auc", "gender", lam=1e-4)
    cell = _row(table, "fairclip [lambda=0.0001]").cells["gender"]
    assert cell.mean == pytest.approx(100 * statistics.mean(ref.values()))


def test_latex_bold_and_escaping(loaded):
    race = _table(build_tables(loaded.frame), "race")
    tex = render_latex([race])
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex and r"$\pm$" in tex
    assert "ddof = 1" in tex and "_" not in tex.replace(r"\_", "")


def test_cli_long_csv_one_row_per_run_attribute_group_metric(root):
    result = CliRunner().invoke(app, ["table", "--out", str(root), "--format", "long-csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    expected = 0
    for path in root.rglob("result.json"):
        suite = json.loads(path.read_text())["metrics"]["test"]
        expected += 2 + sum(len(b) - 1 + sum(len(g) - 1 for g in b["groups"].values())
                            for b in suite["attributes"].values())
    assert len(frame) == expected
    one = frame[(frame.method == "fairmoe") & (frame.seed == 2) & (frame.eval_attribute == "race")
                & (frame.group == "Black") & (frame.metric == "auc") & (frame.dataset == "fairvlmed")]
    ref = json.loads(next((root / "fairvlmed" / "fairmoe").rglob("seed2/result.json")).read_text())
    assert one["value"].item() == pytest.approx(ref["metrics"]["test"]["attributes"]["race"]["groups"]["Black"]["auc"])


def test_cli_skips_corrupt_result_with_warning(root, tmp_path):
    root = Path(shutil.copytree(root, tmp_path / "r"))
    bad = root / "fairvlmed" / "clip" / "b16" / "none" / "deadbeef00" / "seed7"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{not json")
    result = CliRunner().invoke(app, ["table", "--out", str(root), "--format", "markdown", "--attr", "race"])
    assert result.exit_code == 0
    assert "warning: skipped" in result.stderr and str(bad / "result.json") in result.stderr
    assert "Traceback" not in result.output
    assert "| clip | b16 | 3 |" in _md(result.stdout)


@pytest.mark.parametrize("args, message", [
    (["--format", "xls"], "--format 'xls'"),
    (["--attr", "age"], "--attr age"),
    (["--compare", "fairclip"], "only 'paper'"),
])
def test_cli_bad_options_one_line(root, args, message):
    result = CliRunner().invoke(app, ["table", "--out", str(root), *args])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_cli_empty_folder_says_so(tmp_path):
    result = CliRunner().invoke(app, ["table", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "no finished runs" in result.stderr and "Traceback" not in result.output


# -- first-hour fixes: wide seed spread, absent methods, single-seed best ----------------------------

@pytest.fixture(scope="module")
def spread_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'collapsed' loses its signal on seed 2 (AUC near chance); 'steady' does not."""
    from tests.helpers import write_run

    root = tmp_path_factory.mktemp("spread")
    for seed in range(3):
        write_run(root, "steady", "b16", None, seed, strength=1.5)
        write_run(root, "collapsed", "b16", None, seed, strength=0.0 if seed == 2 else 1.6)
    return root


def test_wide_seed_spread_is_flagged_naming_the_far_seed(spread_root):
    race = _table(build_tables(load_results(spread_root).frame), "race")
    auc = _row(race, "collapsed").cells["auc"]
    values = dict(auc.per_seed)
    assert auc.std > 0.10 * auc.mean  # the situation: one collapsed seed
    assert auc.wide and _row(race, "collapsed").cells["es_auc"].wide
    assert not _row(race, "steady").cells["auc"].wide
    assert not any(_row(race, "collapsed").cells[k].wide for k in ("dpd", "eod"))  # ↓ gaps are never flagged
    note = next(n for n in race.notes if n.startswith("⚠ collapsed/b16"))
    assert f"AUC std {auc.std:.2f} is {auc.std / auc.mean:.0%} of its mean {auc.mean:.2f}" in note
    assert f"seed 2 = {values[2]:.2f}" in note and "far off: seed 2)" in note
    assert not any(n.startswith("⚠ steady") for n in race.notes)
    md = render_markdown([race])
    assert f"{auc.mean:.2f} ± {auc.std:.2f} ⚠" in md and "above 10% of its mean" in md
    assert "| collapsed | b16 | 3 ⚠ |" in _md(md)


def test_spread_flag_is_a_table_option(spread_root):
    import inspect

    from fairbench.commands.table import table as table_cmd
    from fairbench.report.tables import DEFAULT_SPREAD

    assert inspect.signature(table_cmd).parameters["spread_warn"].default.default == DEFAULT_SPREAD
    off = CliRunner().invoke(app, ["table", "--out", str(spread_root), "--attr", "race", "--format", "markdown",
                                   "--spread-warn", "0"])
    assert off.exit_code == 0 and "⚠" not in off.stdout
    loose = CliRunner().invoke(app, ["table", "--out", str(spread_root), "--attr", "race", "--format", "markdown",
                                     "--spread-warn", "0.5"])
    assert loose.exit_code == 0 and "⚠" not in loose.stdout
    on = CliRunner().invoke(app, ["table", "--out", str(spread_root), "--attr", "race", "--format", "markdown"])
    assert on.exit_code == 0 and "far off: seed 2" in on.stdout
    bad = CliRunner().invoke(app, ["table", "--out", str(spread_root), "--spread-warn", "-1"])
    assert bad.exit_code == 2 and "--spread-warn" in bad.stderr


def test_absent_methods_are_explained(loaded):
    tables = build_tables(loaded.frame)
    gender = _table(tables, "gender")
    assert {r.method for r in gender.rows} == {"clip", "fairclip"}
    assert "fairmoe/b16: not trained on gender (trained on: race), so not in this table; add with " \
           "`fairbench run --attr gender`." in gender.notes
    ethnicity = _table(tables, "ethnicity")
    assert [r.label for r in ethnicity.rows] == ["clip"]  # a lone row ...
    notes = " ".join(ethnicity.notes)  # ... with the reason the others are absent
    assert "fairclip/b16: not trained on ethnicity (trained on: gender, race)" in notes
    assert "fairmoe/b16: not trained on ethnicity (trained on: race)" in notes
    assert not any("clip/b16:" in n and "not trained" in n for n in _table(tables, "race").notes)
    (ablation,) = [t for t in build_tables(loaded.frame, layout="ablation")
                   if (t.dataset, t.selection) == ("fairvlmed", "val")]
    assert "fairmoe/b16: – for gender, ethnicity, language: not trained on them (trained on: race)." \
           in ablation.notes


def test_single_seed_best_is_never_unexplained(tmp_path):
    from tests.helpers import write_run

    write_run(tmp_path, "solo", "b16", None, 0, strength=2.5)
    for seed in range(3):
        write_run(tmp_path, "trio", "b16", None, seed, strength=0.5)
    race = _table(build_tables(load_results(tmp_path).frame), "race")
    solo = _row(race, "solo")
    assert solo.cells["auc"].best and solo.cells["auc"].n == 1
    best = [c.label for c in race.columns if solo.cells[c.key].best]
    assert f"marked best for {', '.join(best)} on a single seed" in solo.flag
    md = render_markdown([race])
    assert "| solo | b16 | 1 ⚠ |" in _md(md) and "on a single seed" in md
    # every row on one seed (a quick `--seeds 1` run): no "missing seeds" flag, but the best mark is still explained
    only = tmp_path / "one"
    for method, strength in (("x", 2.0), ("y", 0.5)):
        write_run(only, method, "b16", None, 0, strength=strength)
    race = _table(build_tables(load_results(only).frame), "race")
    x = _row(race, "x")
    assert x.cells["auc"].best and "missing" not in x.flag and "on a single seed" in x.flag
    assert not _row(race, "y").flag


def _paper_at(value: float) -> PaperTables:
    """A published-numbers table with one value: clip/b16 ES-AUC on race (the relabelled fixture runs' cell)."""
    frame = pd.DataFrame({"table": [1], "attribute": ["race"], "method": ["clip"], "arch": ["ViT-B/16"],
                          "metric": ["ES-AUC"], "mean": [value], "std": [1.0], "dataset": ["fairvlmed"]})
    return PaperTables(frame, "inline")


def test_paper_verdict_against_our_seeds_95_interval(loaded, root):
    """Our three clip seeds give an interval (scipy's t interval of the mean); a published value inside it
    reproduces, above or below it does not, and the summary line counts each."""
    from scipy import stats

    ours = [100 * v for v in _values(root, "clip", "none", "es_auc", "race").values()]
    lo, hi = stats.t.interval(0.95, len(ours) - 1, loc=statistics.mean(ours), scale=stats.sem(ours))
    for value, verdict in ((statistics.mean(ours), "inside"), (hi + 0.01, "above"), (lo - 0.01, "below")):
        race = _table(build_tables(loaded.frame, paper=_paper_at(value), attrs=["race"]), "race")
        cell = _row(race, "clip").cells["es_auc"]
        assert cell.interval == pytest.approx((lo, hi), abs=1e-9)
        assert cell.verdict == verdict
        summary = [n for n in race.notes if n.startswith("verdict:")]
        reproduced = 1 if verdict == "inside" else 0
        assert summary == [f"verdict: {reproduced} of 1 published cells reproduce (the published value lies inside "
                           f"our seeds' 95% interval, mean ± t·std/√n); published above it: "
                           f"{int(verdict == 'above')}, below it: {int(verdict == 'below')}."]
        md = _md(render_markdown([race]))
        assert f"| {cell.diff:+.2f} | {verdict} |" in md
        wide = pd.read_csv(io.StringIO(render_csv([race])))
        assert wide[wide.method == "clip"].iloc[0].col1_paper_verdict == verdict


def test_cli_table_compare_paper_prints_the_verdict_column_and_summary(root):
    result = CliRunner().invoke(app, ["table", "--out", str(root), "--attr", "race", "--compare", "paper"])
    assert result.exit_code == 0, result.output
    assert "verdict" in result.stdout and "published cells reproduce" in result.stdout
