"""Figures from a results folder: fairness–performance trade-off, per-group AUC, per-group ROC curves.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed), returned to the caller for inspection, and saved as PNG and PDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairbench.report.aggregate import eval_attributes, for_attribute, selection_label
from fairbench.report.load import load_predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALE = 100.0
RANGE = (0.0, SCALE)  # every plotted metric (AUC, ES-AUC, DPD, group AUC) is a rate × 100
SPLIT = "test"  # every figure shows test-split metrics or predictions
ROW = ["method", "arch", "variant"]


@dataclass
class PlotSet:
    figures: dict[str, Figure] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # figure name → what the figure shows, in words


def figure_name(tag: str, rule: str, attr: str, kind: str) -> str:
    """File stem named by the split shown; a non-default selection rule is added as `_<rule>-selected`.

    The selection rule used to sit where a split name is expected (`..._val_race_roc` plotted test
    predictions), which read as if the figure showed validation data.
    """
    return f"{tag}_{SPLIT}_{attr}_{kind}" + ("" if rule == "val" else f"_{rule}-selected")


def clipped_error(mean: Any, std: Any, lo: float = RANGE[0], hi: float = RANGE[1]) -> np.ndarray:
    """Error bar lengths (2, n) below/above each mean so that mean ± std never leaves [lo, hi].

    A wide spread near AUC 100 would otherwise draw a bar to 110, a value no metric can take.
    """
    mean = np.atleast_1d(np.asarray(mean, dtype=float))
    std = np.nan_to_num(np.atleast_1d(np.asarray(std, dtype=float)))
    below = np.clip(np.minimum(std, mean - lo), 0, None)
    above = np.clip(np.minimum(std, hi - mean), 0, None)
    return np.nan_to_num(np.vstack([below, above]))


def row_label(method: str, arch: str, variant: str) -> str:
    return f"{method}/{arch}" + (f" [{variant}]" if variant else "")


def plot_title(what: str, dataset: str, synthetic: bool, selection: str) -> str:
    warn = "SYNTHETIC DATA — " if synthetic else ""
    return f"{warn}{what} · {dataset} · selection: {selection_label(selection)}"


def _new_figure(n: int, width: float = 6.0, height: float = 4.6, max_cols: int = 4) -> tuple[Figure, list[Any]]:
    """A figure with n panels, at most max_cols per row; unused panels are removed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n, max_cols)
    nrows = math.ceil(n / ncols)
    # at least 9 inches wide so the two-line title (dataset, selection rule) is never clipped
    fig = Figure(figsize=(max(width * ncols, 9.0), height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _per_run(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One line per run with the requested attribute-level metrics as columns (× 100)."""
    sub = frame[(frame["group"] == "") & frame["metric"].isin(metrics)]
    wide = sub.pivot_table(index=ROW + ["seed", "run_id"], columns="metric", values="value", aggfunc="first")
    return (wide * SCALE).reset_index()


def tradeoff_figure(frame: pd.DataFrame, attr: str, title: str) -> Figure | None:
    """AUC vs ES-AUC and AUC vs DPD: one marker per method (mean ± std), faint points per seed."""
    runs = _per_run(for_attribute(frame, attr), ["auc", "es_auc", "dpd"])
    if runs.empty:
        return None
    fig, (ax1, ax2) = _new_figure(2)
    rows = list(runs.groupby(ROW, sort=True))
    for color, (key, part) in zip(_colors(len(rows)), rows, strict=True):
        label = row_label(*key)
        for ax, ycol in ((ax1, "es_auc"), (ax2, "dpd")):
            if ycol not in part or "auc" not in part:
                continue
            x, y = part["auc"], part[ycol]
            ax.scatter(x, y, color=color, alpha=0.3, s=18, linewidths=0)
            ax.errorbar([x.mean()], [y.mean()], xerr=clipped_error(x.mean(), x.std(ddof=1)),
                        yerr=clipped_error(y.mean(), y.std(ddof=1)), fmt="o", color=color, capsize=3, ms=7,
                        label=f"{label} (n={len(part)})")
    ax1.set(xlabel="AUC (× 100) ↑", ylabel=f"ES-AUC {attr} (× 100) ↑", title="performance vs equity-scaled AUC")
    ax2.set(xlabel="AUC (× 100) ↑", ylabel=f"DPD {attr} (× 100) ↓", title="performance vs demographic parity gap")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="best")
    _suptitle(fig, f"{title}\nattribute: {attr}; markers: mean ± std (ddof = 1) over seeds, bars cut at 0 and 100; "
                   "faint: single seeds")
    return fig


def group_auc_figure(frame: pd.DataFrame, attr: str, title: str) -> Figure | None:
    """Per-group AUC bars (mean ± std over seeds), one bar per method within each group."""
    sub = for_attribute(frame, attr)
    sub = sub[(sub["group"] != "") & (sub["metric"] == "auc")]
    if sub.empty:
        return None
    stats = sub.groupby(ROW + ["group"], sort=True)["value"].agg(["mean", lambda v: v.std(ddof=1)])
    stats.columns = ["mean", "std"]
    stats = (stats * SCALE).reset_index()
    groups = list(dict.fromkeys(sub["group"]))
    keys = sorted({tuple(k) for k in stats[ROW].itertuples(index=False)})
    fig, (ax,) = _new_figure(1, width=max(6.0, 1.6 * len(groups) * max(1, len(keys)) / 2))
    width = 0.8 / len(keys)
    xs = np.arange(len(groups))
    for i, (color, key) in enumerate(zip(_colors(len(keys)), keys, strict=True)):
        part = stats[(stats[ROW] == pd.Series(key, index=ROW)).all(axis=1)].set_index("group").reindex(groups)
        ax.bar(xs + (i - (len(keys) - 1) / 2) * width, part["mean"], width,
               yerr=clipped_error(part["mean"], part["std"]), color=color, capsize=2, label=row_label(*key))
    ax.set_xticks(xs, groups)
    ax.set(xlabel=f"{attr} group", ylabel="group AUC (× 100) ↑", title=f"per-group AUC · {attr}")
    lo = np.nanmin(stats["mean"] - stats["std"].fillna(0)) if len(stats) else 0
    ax.set_ylim(50 if lo >= 50 else 0, 100)  # bars start at chance (AUC 50) unless a group is below it
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(4, len(keys)))
    _suptitle(fig, f"{title}\nbars: mean ± std (ddof = 1) over seeds, error bars cut at 100")
    return fig


def roc_figure(records: list[dict[str, Any]], labels: dict[str, str], attr: str, title: str,
               problems: list[str]) -> Figure | None:
    """Per-group ROC curves of each method's lowest seed, from its saved test predictions."""
    from sklearn.metrics import roc_auc_score, roc_curve

    chosen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: int(r["seed"])):
        if rec.get("attribute") not in (None, attr) or attr not in rec["metrics"]["test"].get("attributes", {}):
            continue
        chosen.setdefault((rec["method"], rec["arch"], labels[rec["_dir"]]), rec)
    panels = []
    for key in sorted(chosen):
        rec = chosen[key]
        preds, problem = load_predictions(rec, SPLIT)
        if preds is None:
            problems.append(f"{problem} (its ROC panel is not drawn)")
        elif attr not in preds.columns:
            problems.append(f"{rec['_dir']}/predictions_{SPLIT}.csv: no column {attr!r}; ROC curves not drawn")
        else:
            panels.append((key, rec, preds))
    if not panels:
        return None
    fig, axes = _new_figure(len(panels), width=4.4, height=4.4)
    for ax, (key, rec, preds) in zip(axes, panels, strict=True):
        groups = rec["metrics"]["test"]["attributes"][attr].get("groups") or {}
        names = {int(g["code"]): name for name, g in groups.items() if g.get("code") is not None}
        y, s = preds["label"].to_numpy(), preds["score"].to_numpy()
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color="black", ls="--", lw=1.2, label=f"all (AUC {SCALE * roc_auc_score(y, s):.1f})")
        codes = preds[attr].to_numpy()
        for color, code in zip(_colors(len(names)), sorted(names), strict=True):
            m = codes == code
            if len(np.unique(y[m])) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[m], s[m])
            ax.plot(fpr, tpr, color=color, lw=1.5,
                    label=f"{names[code]} (n={int(m.sum())}, AUC {SCALE * roc_auc_score(y[m], s[m]):.1f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, alpha=0.5)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
               title=f"{row_label(*key)} · seed {rec['seed']}")
        ax.set_aspect("equal", adjustable="box")
        ax.legend(fontsize=7, loc="lower right")
    _suptitle(fig, f"{title}\nper-group ROC · {attr} (test predictions of each method's lowest seed)")
    return fig


def figure_caption(kind: str, attr: str, tag: str, synthetic: bool, rule: str) -> str:
    """What a figure shows, in a sentence (the report's caption)."""
    what = {
        "tradeoff": f"Accuracy against fairness on {attr}: test AUC against ES-AUC and against DPD, one marker "
                    "per method (mean ± std over seeds; faint dots are single seeds)",
        "group_auc": f"Test AUC of each {attr} group, one bar per method (mean ± std over seeds; dotted line: "
                     "chance, AUC 50)",
        "roc": f"ROC curve of each {attr} group on the test set, one panel per method (its lowest seed's "
               "predictions; dashed: all patients)",
    }[kind]
    data = "SYNTHETIC data" if synthetic else f"Dataset {tag}"
    return f"{what}. {data}; models selected by {selection_label(rule)}."


def _suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=10, color="firebrick" if text.startswith("SYNTHETIC") else "black")


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    return paths


def make_plots(records: list[dict[str, Any]], frame: pd.DataFrame, outdir: Path | None,
               attrs: list[str] | None = None, dataset: str | None = None, select: str | None = None,
               kinds: tuple[str, ...] = ("tradeoff", "group_auc", "roc")) -> PlotSet:
    """All figures, one set per (dataset, selection rule) and evaluation attribute; saved when outdir is set."""
    from fairbench.report.aggregate import variant_labels

    out = PlotSet()
    labels = variant_labels(records)
    if dataset is not None:
        frame = frame[frame["dataset"] == dataset]
    if select is not None:
        frame = frame[frame["selection"] == select]
    groups = sorted(frame.groupby(["dataset", "synthetic", "selection"]), key=lambda kv: (kv[0][1], kv[0][0],
                                                                                       kv[0][2] != "val"))
    for (tag, synthetic, rule), part in groups:
        recs = [r for r in records if r["dataset"].get("tag") == tag and r["selection"].get("rule") == rule]
        for attr in eval_attributes(part):
            if attrs is not None and attr not in attrs:
                continue
            title = plot_title("fairbench", tag, bool(synthetic), rule)
            builders = {
                "tradeoff": lambda a=attr, t=title, p=part: tradeoff_figure(p, a, t),
                "group_auc": lambda a=attr, t=title, p=part: group_auc_figure(p, a, t),
                "roc": lambda a=attr, t=title, rs=recs: roc_figure(rs, labels, a, t, out.problems),
            }
            for kind in kinds:
                fig = builders[kind]()
                if fig is None:
                    continue
                name = figure_name(tag, rule, attr, kind)
                out.figures[name] = fig
                out.captions[name] = figure_caption(kind, attr, tag, bool(synthetic), rule)
                if outdir is not None:
                    out.files += save_figure(fig, Path(outdir) / name)
    return out
