"""Render paired comparisons (fairbench.report.significance) for the terminal or as JSON."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from fairbench.report.aggregate import selection_label
from fairbench.report.significance import Comparison

DASH = "–"


def _f(x: float, fmt: str = ".2f") -> str:
    return DASH if x is None or math.isnan(x) else format(x, fmt)


def _p(x: float) -> str:
    return DASH if math.isnan(x) else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return DASH
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():.2f}"


def title(c: Comparison) -> str:
    warn = "SYNTHETIC DATA — " if c.synthetic else ""
    return (f"{warn}{c.method_a} (A) vs {c.method_b} (B) · {c.arch} · attribute: {c.attribute} · dataset: "
            f"{c.dataset} · selection: {selection_label(c.selection)} · seeds {', '.join(map(str, c.seeds))}")


def noise_sentence(c: Comparison) -> str:
    """Which noise each test covers, in words (printed above the verdicts)."""
    return ("The t-test and sign test pair the seeds: they measure training randomness (would other seeds "
            "change the order?). The paired bootstrap resamples the test samples: it measures test-set sampling "
            "(would another test set of this size change it?). A difference counts as real only when both give "
            f"p < {c.alpha:g}; a small bootstrap p alone says the test set is large, not that seeds agree.")


def render_comparisons(comparisons: list[Comparison], width: int = 220) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, highlight=False)
    for c in comparisons:
        ci = f"{100 * (1 - c.alpha):.0f}%"
        table = Table(title=escape(title(c)), caption=escape(
            f"{_scale_text(c)}; A/B: mean ± std over seeds (ddof = 1); Δ = A − B per seed; t-test: paired over seeds; "
            f"sign test: A wins/B wins; bootstrap: {c.n_resamples} paired resamples of the test samples per seed, "
            f"CI of the seed-averaged Δ ({ci}); BH q: Benjamini–Hochberg adjusted p over every comparison of this "
            f"command, per test; α = {c.alpha}"), caption_justify="left")
        for name in ("metric", "A", "B", "Δ mean", "Δ per seed", "t-test p (seeds)", "BH q", "sign test (seeds)",
                     f"bootstrap {ci} CI (test set)", "bootstrap p (test set)", "BH q "):
            table.add_column(name, overflow="fold")
        for m in c.metrics:
            per_seed = " ".join(_f(a - b, "+.2f") for a, b in zip(m.a, m.b, strict=True))
            sign = f"{m.wins[0]}/{m.wins[1]} p={_p(m.sign_p)}"
            boot = DASH if math.isnan(m.boot_low) else f"[{m.boot_low:+.2f}, {m.boot_high:+.2f}]"
            table.add_row(*(escape(x) for x in (m.label, _mean_sd(m.a), _mean_sd(m.b), _f(m.diff, "+.2f"),
                                                per_seed, _p(m.t_p), _p(m.t_q), sign, boot, _p(m.boot_p),
                                                _p(m.boot_q))))
        console.print(table)
        console.print(noise_sentence(c), markup=False)
        for m in c.metrics:
            console.print(f"verdict {m.label}: {m.verdict}", markup=False)
        console.print()
        seeds = Table(title="paired bootstrap per seed (test-set sampling noise of each seed)", title_justify="left")
        for name in ("seed", "metric", "Δ", f"{ci} CI", "p"):
            seeds.add_column(name)
        for m in c.metrics:
            for seed, d, lo, hi, p in m.boot_seeds:
                seeds.add_row(str(seed), escape(m.label), _f(d, "+.2f"), f"[{_f(lo, '+.2f')}, {_f(hi, '+.2f')}]",
                              _p(p))
        if seeds.row_count:
            console.print(seeds)
        for note in c.notes:
            console.print(f"  note: {note}", markup=False)
        console.print()
    return buf.getvalue()


def _scale_text(c: Comparison) -> str:
    """"values × 100" when every compared metric prints × 100 (the built-ins), else which ones do."""
    scaled = [m.label for m in c.metrics if m.scale == 100.0]
    if len(scaled) == len(c.metrics):
        return "values × 100"
    return f"values × 100 for {', '.join(scaled)}, others as they are" if scaled else "values as they are"


def _scale(c: Comparison) -> float | None:
    scales = {m.scale for m in c.metrics}
    return int(scales.pop()) if len(scales) == 1 else None


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def to_json(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """JSON-ready dicts (values × `scale`, 100; NaN → null); when the compared metrics print at different scales,
    `scale` is null and each metric carries its own."""
    out = []
    for c in comparisons:
        metrics = []
        for m in c.metrics:
            metrics.append({
                "metric": m.metric, "label": m.label, "seeds": m.seeds, "a": [_num(x) for x in m.a],
                "b": [_num(x) for x in m.b], "diff_mean": _num(m.diff), "t_test_p": _num(m.t_p),
                "t_test_q_bh": _num(m.t_q), "bootstrap_q_bh": _num(m.boot_q),
                "sign_test_p": _num(m.sign_p), "wins_a": m.wins[0], "wins_b": m.wins[1], "ties": m.wins[2],
                "bootstrap_ci": [_num(m.boot_low), _num(m.boot_high)], "bootstrap_p": _num(m.boot_p),
                "bootstrap_per_seed": [{"seed": s, "diff": _num(d), "low": _num(lo), "high": _num(hi), "p": _num(p)}
                                       for s, d, lo, hi, p in m.boot_seeds],
                "verdict": m.verdict,
                **({} if _scale(c) is not None else {"scale": int(m.scale)}),
            })
        out.append({"method_a": c.method_a, "method_b": c.method_b, "arch": c.arch, "attribute": c.attribute,
                    "dataset": c.dataset, "synthetic": c.synthetic, "selection": c.selection, "seeds": c.seeds,
                    "n_resamples": c.n_resamples, "alpha": c.alpha, "scale": _scale(c) if c.metrics else 100,
                    "metrics": metrics,
                    "notes": c.notes})
    return out
