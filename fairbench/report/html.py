"""One self-contained HTML page: protocol, tables and figures (PNG embedded as base64).

The page is meant to be mailed or archived next to a paper draft, so it carries everything needed to
judge the numbers: data (with a loud synthetic warning), selection rule, seeds, configs and versions.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from fairbench.metrics.catalog import table_metrics
from fairbench.registry import LAYOUTS
from fairbench.report.aggregate import selection_label, variant_labels
from fairbench.report.load import Loaded
from fairbench.report.paper import PaperTables
from fairbench.report.render import render_html_table
from fairbench.report.tables import build_tables

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1300px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #666; font-size: 0.9rem; }
.banner { background: #fdecea; border: 2px solid #c0392b; color: #8e1b10; padding: 0.7rem 1rem;
          font-weight: 700; border-radius: 6px; margin: 1rem 0; }
.optimistic { background: #fff4e0; border-color: #d68910; color: #7e5109; }
.warnings { background: #fffbe6; border: 1px solid #e0c060; padding: 0.5rem 1rem; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.5rem 0 0.3rem; font-size: 0.88rem; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.8rem; padding-top: 0.3rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; } td:nth-child(1), td:nth-child(2), th:nth-child(1), th:nth-child(2) { text-align: left; }
td strong { color: #1a7f37; }
.table-block.synthetic h3 { color: #c0392b; }
.table-block { overflow-x: auto; margin-bottom: 1.4rem; }
ul.notes { font-size: 0.82rem; color: #444; margin-top: 0.2rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
table.small { font-size: 0.8rem; margin: 0.2rem 0 0.4rem; }
.paper { color: #777; font-size: 0.75rem; }
code { background: #f4f6f8; padding: 0 0.2rem; border-radius: 3px; }
"""


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _small_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain <table> of already-escaped cells."""
    esc_head = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="small"><thead><tr>{esc_head}</tr></thead><tbody>{body}</tbody></table>'


def _count(value: Any) -> str:
    return "–" if value is None else html.escape(str(value))


def _splits_table(recs: list[dict[str, Any]]) -> str:
    """Samples per split and how many evaluation dropped for an unknown attribute (training keeps them all);
    one block of rows per data version when the runs' fingerprints differ."""
    versions: dict[str, dict[str, Any]] = {}
    for r in recs:
        versions.setdefault(str(r["dataset"].get("fingerprint")), r["dataset"])
    several = len(versions) > 1
    rows = []
    for fingerprint, ds in versions.items():
        counts, dropped = ds.get("n") or {}, ds.get("n_dropped") or {}
        for split in counts:
            kept = "all kept (training)" if split not in dropped else _count(dropped[split])
            rows.append(([html.escape(fingerprint)] if several else []) + [html.escape(split), _count(counts[split]),
                                                                           kept])
    head = (["data version"] if several else []) + ["split", "samples", "dropped: unknown attribute"]
    return _small_table(head, rows)


def _versions_table(recs: list[dict[str, Any]]) -> str:
    """Software → version(s) over the runs (several versions listed when runs differ), then the devices."""
    found: dict[str, list[str]] = defaultdict(list)
    for r in recs:
        for name, version in (r.get("versions") or {}).items():
            if str(version) not in found[name]:
                found[name].append(str(version))
    for r in recs:
        device = str(r.get("device", "?"))
        if device not in found["device"]:
            found["device"].append(device)
    rows = [[html.escape(name), html.escape(", ".join(vs))] for name, vs in found.items()]
    return _small_table(["software", "version"], rows)


def _protocol(records: list[dict[str, Any]]) -> list[str]:
    """One section per (dataset, selection rule): data, selection, seeds, configs, versions."""
    esc = html.escape
    labels = variant_labels(records)
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_key[(rec["dataset"].get("tag", "?"), rec["selection"].get("rule", "?"))].append(rec)
    out = []
    for (tag, rule), recs in sorted(by_key.items(), key=lambda kv: (kv[1][0]["dataset"].get("synthetic", False),
                                                                      kv[0][0], kv[0][1] != "val")):
        ds = recs[0]["dataset"]
        name = ds.get("name") or tag
        what = f"<code>{esc(tag)}</code>" + (f" ({esc(name)})" if name != tag else "")
        out.append(f"<h3>dataset {what} · selection: {esc(selection_label(rule))}</h3>")
        if any(r["dataset"].get("synthetic") for r in recs):
            out.append(f'<div class="banner">SYNTHETIC DATA — generated images and texts standing in for {esc(name)}. '
                       "These numbers test the pipeline; they say nothing about the real task.</div>")
        if rule == "test":
            out.append('<div class="banner optimistic">Epochs chosen by best TEST AUC (the papers\' rule): '
                       "optimistic, because the test set picked the model.</div>")
        fingerprints = sorted({str(r["dataset"].get("fingerprint")) for r in recs})
        items = [f"data path: <code>{esc(str(ds.get('path', '?')))}</code>; fingerprint(s): "
                 f"{esc(', '.join(fingerprints))}", "samples per split:" + _splits_table(recs)]
        if len(fingerprints) > 1:
            items.append("<strong>runs were made on different data versions (fingerprints differ)</strong>")
        rows = defaultdict(list)
        for r in recs:
            rows[(r["method"], r["arch"], r.get("attribute") or "none", labels[r["_dir"]], r["config_hash"])].append(r)
        lines = []
        for (method, arch, attr, variant, cfg_hash), rs in sorted(rows.items()):
            seeds = ", ".join(str(s) for s in sorted(int(r["seed"]) for r in rs))
            epochs = sorted({str(r["selection"].get("epoch")) for r in rs})
            lines.append(f"<tr><td>{esc(method)}{' [' + esc(variant) + ']' if variant else ''}</td><td>{esc(arch)}"
                         f"</td><td>{esc(attr)}</td><td>{esc(cfg_hash)}</td><td>{esc(seeds)}</td>"
                         f"<td>{esc(', '.join(epochs))}</td></tr>")
        items.append("<table><thead><tr><th>method</th><th>arch</th><th>trained on</th><th>config</th>"
                     "<th>seeds</th><th>selected epoch(s)</th></tr></thead><tbody>" + "".join(lines)
                     + "</tbody></table>")
        warned = [f"{r.get('run_id') or r['_dir']}: {w}" for r in recs for w in (r.get("warnings") or [])]
        if warned:
            items.append("run warnings: <ul>" + "".join(f"<li>{esc(str(w))}</li>" for w in warned) + "</ul>")
        items.append("software versions and devices:" + _versions_table(recs))
        out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
        out.append(_data_card(name, tag))
    return out


def _data_card(name: str, tag: str) -> str:
    """The registered dataset's card (source, licence, citation, label mapping, pitfalls) for the data a section
    reports; a line saying how to get it when the dataset is not registered in this process."""
    from fairbench.registry import UnknownNameError, dataset_for_tag, get_dataset

    esc = html.escape
    try:
        cls = get_dataset(name)
    except UnknownNameError:
        cls = dataset_for_tag(tag)
    if cls is None:
        return (f'<p class="meta">data card: dataset {esc(name)} is not registered here; pass its plugin or dataset '
                "file with --plugin to include its card</p>")
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in cls.card.lines())
    return (f'<details class="card" open><summary>data card: {esc(cls.name)}</summary>'
            f"<table><tbody>{rows}</tbody></table></details>")


def _read_history(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's history.json records ([] when it is missing or unreadable: the report still renders)."""
    import json

    path = Path(record["_dir"]) / ((record.get("files") or {}).get("history") or "history.json")
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def _gradient_shares(records: list[dict[str, Any]]) -> list[str]:
    """Each loss term's share of the gradient (fairbench.training.probe) at the first and the last epoch, mean over
    seeds, per run configuration; shares below the inert threshold are marked. Empty when no run has a probe."""
    from fairbench.training.probe import INERT_SHARE

    esc = html.escape
    labels = variant_labels(records)
    rows: dict[tuple, dict[tuple[str, str], list[list[float]]]] = defaultdict(lambda: defaultdict(lambda: [[], []]))
    for r in records:
        probed = [h for h in _read_history(r) if isinstance(h.get("grad_shares"), dict)]
        if not probed:
            continue
        key = (r["method"], r["arch"], r.get("attribute") or "none", labels[r["_dir"]], r["config_hash"])
        for slot, record in enumerate((probed[0], probed[-1])):
            for term, per_set in record["grad_shares"].items():
                for name, share in (per_set or {}).items():
                    if isinstance(share, (int, float)):
                        rows[key][(term, name)][slot].append(float(share))
    if not rows:
        return []

    def cell(values: list[float]) -> str:
        if not values:
            return "–"
        mean = sum(values) / len(values)
        text = f"{mean:.2g}"
        return f"<strong>{text} (inert)</strong>" if mean < INERT_SHARE else text

    lines = []
    for (method, arch, attr, variant, cfg), terms in sorted(rows.items()):
        for (term, name), (first, last) in terms.items():
            where = "all trainable parameters" if name == "all" else name
            lines.append([esc(method) + (f" [{esc(variant)}]" if variant else ""), esc(arch), esc(attr), esc(cfg),
                          esc(term), esc(where), cell(first), cell(last)])
    return ["<h2>Loss terms: share of the gradient</h2>",
            '<p class="meta">Each term\'s gradient norm over the sum of all terms\' norms on the same parameters, '
            "measured on one batch at the start of each epoch (mean over seeds). A term below "
            f"{INERT_SHARE:g} on every set cannot change what the model learns at these settings.</p>",
            _small_table(["method", "arch", "trained on", "config", "term", "parameters", "first epoch",
                          "last epoch"], lines)]


def build_report(loaded: Loaded, paper: PaperTables | None = None, attrs: list[str] | None = None,
                 plots: bool = True, source: str = "") -> tuple[str, list[str]]:
    """The HTML page and the problems met building it (missing predictions etc.)."""
    esc = html.escape
    problems = list(loaded.problems)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>fairbench report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>fairbench report</h1>",
             f'<p class="meta">results folder <code>{esc(source)}</code> · {len(loaded.records)} finished runs · '
             f"generated {now}</p>"]
    if any(r["dataset"].get("synthetic") for r in loaded.records):
        parts.append('<div class="banner">This report contains results on SYNTHETIC data; those tables and '
                     "figures are marked and never mixed with real-data results.</div>")
    body: list[str] = []
    frame = loaded.frame
    if not frame.empty:
        body.append("<h2>Protocol</h2>")
        body += _protocol(loaded.records)
        body += _gradient_shares(loaded.records)
        metrics = ", ".join(m.label for m in table_metrics())
        for layout in LAYOUTS.values():
            if layout.report_heading is None:
                continue
            body.append(f"<h2>{esc(layout.report_heading.format(metrics=metrics))}</h2>")
            tables = build_tables(frame, layout.name, attrs=attrs)
            if paper is not None and layout.report_paper:
                real = build_tables(frame[~frame["synthetic"]], layout.name, attrs=attrs, paper=paper)
                tables = real + [t for t in tables if t.synthetic]
            body += [render_html_table(t) for t in tables]
        if plots:
            from fairbench.report.plots import make_plots

            figs = make_plots(loaded.records, frame, None, attrs=attrs)
            problems += figs.problems
            body.append("<h2>Figures</h2>")
            for name, fig in figs.figures.items():
                caption = figs.captions.get(name, name)
                body.append(f'<figure><img alt="{esc(caption)}" src="{_png_data_uri(fig)}">'
                            f"<figcaption>{esc(caption)}</figcaption></figure>")
    if problems:
        parts.append('<h2>Warnings</h2><div class="warnings"><ul>'
                     + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul></div>")
    parts += body
    parts.append("</body></html>")
    return "\n".join(parts) + "\n", problems


def write_report(path: Path, page: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
