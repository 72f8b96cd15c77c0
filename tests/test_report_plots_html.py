"""`fairbench plot` and `fairbench report`: files written, axes and legends, embedded images, bad input."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.report.html import build_report
from fairbench.report.load import load_results
from fairbench.report.paper import PaperTables
from fairbench.report.plots import make_plots
from tests.helpers import build_results

REPO = Path(__file__).resolve().parents[1]
EXPECTED_ROWS = ["clip/b16", "fairclip/b16 [lambda=0.0001]", "fairclip/b16 [lambda=1e-05]", "fairmoe/b16"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_results(tmp_path_factory.mktemp("results"))
    # One run without predictions: its ROC panel is dropped with a warning, everything else still drawn.
    (next((root / "fairvlmed" / "fairmoe").rglob("seed0")) / "predictions_test.csv").unlink()
    return root


@pytest.fixture(scope="module")
def plots(root: Path, tmp_path_factory: pytest.TempPathFactory):
    loaded = load_results(root)
    out = tmp_path_factory.mktemp("plots")
    return out, make_plots(loaded.records, loaded.frame, out, attrs=["race"], dataset="fairvlmed", select="val")


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_files_png_and_pdf(plots):
    out, result = plots
    names = {p.name for p in result.files}
    for kind in ("tradeoff", "group_auc", "roc"):
        for ext in ("png", "pdf"):
            assert f"fairvlmed_test_race_{kind}.{ext}" in names
    assert all(p.stat().st_size > 1000 for p in result.files)
    assert (out / "fairvlmed_test_race_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fairvlmed_test_race_tradeoff.pdf").read_bytes()[:4] == b"%PDF"


def test_tradeoff_axes_legend_and_markers(root, plots):
    fig = plots[1].figures["fairvlmed_test_race_tradeoff"]
    ax1, ax2 = fig.axes
    assert (ax1.get_xlabel(), ax1.get_ylabel()) == ("AUC (× 100) ↑", "ES-AUC race (× 100) ↑")
    assert (ax2.get_xlabel(), ax2.get_ylabel()) == ("AUC (× 100) ↑", "DPD race (× 100) ↓")
    legend = _legend(ax1)
    assert legend == ["clip/b16 (n=3)", "fairclip/b16 [lambda=0.0001] (n=3)", "fairclip/b16 [lambda=1e-05] (n=3)",
                      "fairmoe/b16 (n=2)"]
    # faint per-seed points: one per run; the mean marker sits at the mean over seeds
    assert sum(len(c.get_offsets()) for c in ax1.collections if c.get_alpha() == 0.3) == 3 + 3 + 3 + 2
    aucs = [json.loads(p.read_text())["metrics"]["test"]["auc"]
            for p in (root / "fairvlmed" / "fairmoe").rglob("result.json")]
    moe = next(c for c in ax1.containers if c.get_label() == "fairmoe/b16 (n=2)")
    assert moe.lines[0].get_xdata()[0] == pytest.approx(100 * statistics.mean(aucs))
    assert "best validation AUC" in fig._suptitle.get_text()


def test_group_auc_bars(root, plots):
    fig = plots[1].figures["fairvlmed_test_race_group_auc"]
    (ax,) = fig.axes
    assert ax.get_ylabel() == "group AUC (× 100) ↑" and ax.get_xlabel() == "race group"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Asian", "Black", "White"]
    assert _legend(ax) == EXPECTED_ROWS
    from matplotlib.container import BarContainer

    clip_bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    ref = [json.loads(p.read_text())["metrics"]["test"]["attributes"]["race"]["groups"]["Black"]["auc"]
           for p in (root / "fairvlmed" / "clip" / "b16" / "none").rglob("result.json")
           if json.loads(p.read_text())["selection"]["rule"] == "val"]
    assert clip_bars.patches[1].get_height() == pytest.approx(100 * statistics.mean(ref))


def test_roc_panels_skip_missing_predictions_with_warning(plots):
    result = plots[1]
    fig = result.figures["fairvlmed_test_race_roc"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["clip/b16 · seed 0", "fairclip/b16 [lambda=0.0001] · seed 0",
                      "fairclip/b16 [lambda=1e-05] · seed 0"]  # fairmoe's seed-0 predictions were deleted
    assert any("predictions_test.csv: missing" in p for p in result.problems)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("false positive rate", "true positive rate")
    legend = _legend(ax)
    assert legend[0].startswith("all (AUC") and [e.split(" ")[0] for e in legend[1:]] == ["Asian", "Black", "White"]


def test_plot_cli_and_synthetic_title(root, tmp_path):
    result = CliRunner().invoke(app, ["plot", "--out", str(root), "--to", str(tmp_path), "--attr", "race",
                                      "--dataset", "synthetic", "--kind", "tradeoff"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_test_race_tradeoff.pdf",
                                                          "synthetic_test_race_tradeoff.png"]
    loaded = load_results(root)
    figs = make_plots(loaded.records, loaded.frame, None, attrs=["race"], dataset="synthetic", kinds=("tradeoff",))
    assert figs.figures["synthetic_test_race_tradeoff"]._suptitle.get_text().startswith("SYNTHETIC DATA")
    bad = CliRunner().invoke(app, ["plot", "--out", str(root), "--kind", "pie"])
    assert bad.exit_code == 2 and "--kind pie" in bad.stderr


@pytest.fixture(scope="module")
def page(root: Path) -> str:
    loaded = load_results(root)
    html, problems = build_report(loaded, paper=PaperTables.load(REPO / "results/paper/fair-moe-tables.csv"),
                                  attrs=["race"], source=str(root))
    return html


def test_report_is_self_contained_with_tables_plots_protocol(page):
    assert page.count('src="data:image/png;base64,') == 9  # 3 kinds × (fairvlmed val, fairvlmed test, synthetic)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)
    assert "SYNTHETIC DATA" in page and "best TEST AUC" in page and "best validation AUC" in page
    assert "fairclip [lambda=1e-05]" in page and "missing 1" in page
    assert "paper 62.67 ± 3.15" in page  # clip/b16 race ES-AUC, Table 1
    assert "<td>torch</td><td>2.x</td>" in page  # versions from result.json, as a small table
    assert "<td>test</td><td>240</td><td>0</td>" in page  # split counts as a table, not raw JSON
    assert "&quot;train&quot;" not in page and "&quot;torch&quot;" not in page
    assert "predictions_test.csv: missing" in page  # the warning is shown on the page too


def test_report_cli_handles_corrupt_and_empty(root, tmp_path):
    copy = Path(shutil.copytree(root, tmp_path / "r"))
    bad = copy / "fairvlmed" / "clip" / "b16" / "none" / "0000000000" / "seed0"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text('{"schema": "fairbench.result/1"}')
    target = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--out", str(copy), "--to", str(target), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.stderr and "missing method" in result.stderr
    assert "<table>" in target.read_text()
    empty = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "nothing"), "--to", str(tmp_path / "e.html")])
    assert empty.exit_code == 1 and "does not exist" in empty.stderr and "Traceback" not in empty.output


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_renders_in_headless_chromium(page, tmp_path):
    shot = _screenshot_module()
    if shot.find_browser() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    html = tmp_path / "report.html"
    html.write_text(page, encoding="utf-8")
    png = shot.screenshot(html, tmp_path / "report.png", size="1400,2000")
    from matplotlib.image import imread

    pixels = imread(png)
    assert pixels.shape[:2] == (2000, 1400)
    assert pixels[..., :3].std() > 0.05  # not a blank page


def test_figures_are_named_by_the_split_they_show(root, tmp_path):
    loaded = load_results(root)
    result = make_plots(loaded.records, loaded.frame, tmp_path, attrs=["race"], dataset="fairvlmed")
    names = sorted(result.figures)
    assert "fairvlmed_test_race_roc" in names  # selected on validation, shows test predictions
    assert "fairvlmed_test_race_roc_test-selected" in names  # the papers' rule, still the test split
    assert not any("_val_" in n for n in names)
    assert sorted(p.name for p in tmp_path.glob("*roc*.png")) == ["fairvlmed_test_race_roc.png",
                                                                  "fairvlmed_test_race_roc_test-selected.png"]


def _bar_limits(fig, coords: tuple[int, ...] = (0, 1)) -> list[float]:
    """Every end of every error bar drawn on the figure (x and/or y coordinates)."""
    from matplotlib.collections import LineCollection

    ends = []
    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, LineCollection):
                ends += [float(point[i]) for seg in coll.get_segments() for point in seg for i in coords]
    return ends


def test_error_bars_stay_within_the_metric_range(tmp_path):
    """A seed that collapses next to two near-perfect ones: mean ± std would reach past 100."""
    from tests.helpers import write_run

    for seed, strength in enumerate((6.0, 6.0, 0.0)):
        write_run(tmp_path, "wobbly", "b16", None, seed, strength=strength)
        write_run(tmp_path, "steady", "b16", None, seed, strength=1.0)
    loaded = load_results(tmp_path)
    aucs = [100 * r["metrics"]["test"]["auc"] for r in loaded.records if r["method"] == "wobbly"]
    assert statistics.mean(aucs) + statistics.stdev(aucs) > 100  # the unclipped bar would leave the range
    result = make_plots(loaded.records, loaded.frame, None, attrs=["race"], kinds=("tradeoff", "group_auc"))
    for name, coords in (("fairvlmed_test_race_tradeoff", (0, 1)), ("fairvlmed_test_race_group_auc", (1,))):
        ends = _bar_limits(result.figures[name], coords)  # group bars: x is the group position, y the AUC
        assert ends and min(ends) >= 0 and max(ends) <= 100, name
    tradeoff = result.figures["fairvlmed_test_race_tradeoff"]
    assert max(_bar_limits(tradeoff)) == pytest.approx(100)  # clipped, not dropped


def test_report_captions_describe_the_figure(page):
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 9
    assert not any(re.search(r"\w+_(test|val)_\w+_(tradeoff|group_auc|roc)", c) for c in captions)
    assert any(c.startswith("ROC curve of each race group on the test set") for c in captions)
    assert any(c.startswith("Test AUC of each race group") for c in captions)
    assert any("SYNTHETIC data" in c for c in captions)


def test_report_explains_a_single_seed_best(tmp_path):
    from tests.helpers import write_run

    write_run(tmp_path, "solo", "b16", None, 0, strength=2.5)
    write_run(tmp_path, "other", "b16", None, 0, strength=0.5)
    html, _ = build_report(load_results(tmp_path), attrs=["race"], plots=False, source=str(tmp_path))
    assert "<strong>" in html and "on a single seed" in html
