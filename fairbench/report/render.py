"""Render built Tables as terminal text (rich), markdown and LaTeX (tabulate), wide CSV or HTML fragments.

Every renderer shows the title (dataset, SYNTHETIC warning, selection rule), the caption (std
convention, arrows) and the notes (missing seeds, config variants, paper caveats).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable

from fairbench.report.tables import Cell, Column, Table

FORMATS = ("terminal", "markdown", "latex", "csv", "long-csv")
DASH = "–"
_BEST = "\x01"  # internal prefix marking a best value until a renderer styles it


def fmt(value: float, signed: bool = False, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return DASH
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def cell_text(cell: Cell | None) -> str:
    """"67.70 ± 3.13" (std "–" with one seed); " ⚠" follows a std too large for its mean."""
    if cell is None:
        return DASH
    if math.isnan(cell.mean):
        return DASH
    return f"{fmt(cell.mean, digits=cell.digits)} ± {fmt(cell.std, digits=cell.digits)}" + (" ⚠" if cell.wide else "")


def paper_text(cell: Cell | None, default_table: int | None) -> str:
    if cell is None or cell.paper is None:
        return DASH
    text = fmt(cell.paper.mean) + ("" if math.isnan(cell.paper.std) else f" ± {fmt(cell.paper.std)}")
    return text if cell.paper.table == default_table else f"{text} (T{cell.paper.table})"


def _default_table(table: Table) -> int | None:
    return table.paper_table


def _n_text(row_seeds: tuple[int, ...], flag: str) -> str:
    return f"{len(row_seeds)}{' ⚠' if flag else ''}"


def header(table: Table) -> list[str]:
    cols = ["method", "arch", "n"]
    for col in table.columns:
        cols.append(f"{col.label} {col.arrow}")
        if table.compare:
            cols += [f"paper {col.label}", "Δ", "verdict"]
    return cols


def _body(table: Table, mark: Callable[[str], str]) -> list[list[str]]:
    """Rows as strings; `mark(text)` decorates a best value in the renderer's own way."""
    out = []
    for row in table.rows:
        line = [row.label, row.arch, _n_text(row.seeds, row.flag)]
        for col in table.columns:
            cell = row.cells.get(col.key)
            text = cell_text(cell)
            line.append(mark(text) if cell is not None and cell.best else text)
            if table.compare:
                line += [paper_text(cell, _default_table(table)), fmt(cell.diff, signed=True) if cell else DASH,
                         (cell.verdict if cell else "") or DASH]
        out.append(line)
    return out


# -- terminal ---------------------------------------------------------------------------------------

def render_terminal(tables: list[Table], color: bool = False, width: int = 400) -> str:
    """rich tables; best values bold green with a trailing '*' so they survive without colour."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width, highlight=False)
    for table in tables:
        style = "bold red" if table.synthetic else "bold"
        rich = RichTable(title=escape(table.title), title_style=style, caption=escape(table.caption),
                         caption_justify="left")
        for i, name in enumerate(header(table)):
            rich.add_column(escape(name), justify="left" if i < 2 else "right", overflow="fold")
        for line in _body(table, lambda t: _BEST + t):
            rich.add_row(*(_rich_cell(t, color, escape) for t in line))
        console.print(rich)
        for note in table.notes:
            console.print(f"  {note}", markup=False)
        console.print()
    return buf.getvalue()


def _rich_cell(text: str, color: bool, escape: Callable[[str], str]) -> str:
    if not text.startswith(_BEST):
        return escape(text)
    return f"[bold green]{escape(text[1:])}*[/]" if color else escape(text[1:]) + "*"


# -- markdown and LaTeX (tabulate draws the grid; title, caption and notes wrap it) ------------------

def _aligns(head: list[str]) -> tuple[str, ...]:
    return ("left", "left") + ("right",) * (len(head) - 2)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(tables: list[Table]) -> str:
    from tabulate import tabulate

    parts = []
    for table in tables:
        head = header(table)
        grid = tabulate([[_md_escape(t) for t in line] for line in _body(table, lambda t: f"**{t}**")],
                        headers=[_md_escape(h) for h in head], tablefmt="pipe", colalign=_aligns(head),
                        disable_numparse=True)
        lines = [f"### {_md_escape(table.title)}", "", f"_{table.caption}_", "", grid]
        if table.notes:
            lines.append("")
            lines += [f"- {_md_escape(n)}" for n in table.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# tabulate escapes LaTeX's special characters in cells; prose (caption, notes) gets the same rules here,
# and both get the symbols below afterwards, once the text holds no unescaped `$` or `\` of its own.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "^": r"\^{}", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "<": r"\ensuremath{<}",
                  ">": r"\ensuremath{>}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "⚠": "(!)", "−": "-",
                  "–": "--", "—": "---", "·": r"$\cdot$", "×": r"$\times$", "≥": r"$\geq$"}
_BOLD_OPEN, _BOLD_CLOSE = "\ue000", "\ue001"  # private-use placeholders for \textbf{...} around a best value


def _latex_symbols(text: str) -> str:
    text = text.replace(_BOLD_OPEN, r"\textbf{").replace(_BOLD_CLOSE, "}")
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in text)


def latex_escape(text: str) -> str:
    return _latex_symbols("".join(_LATEX_SPECIAL.get(ch, ch) for ch in text))


def render_latex(tables: list[Table]) -> str:
    """booktabs tables; best values in \\textbf; notes follow each table as a small paragraph."""
    from tabulate import tabulate

    parts = []
    for table in tables:
        head = header(table)
        grid = tabulate(_body(table, lambda t: _BOLD_OPEN + t + _BOLD_CLOSE), headers=head,
                        tablefmt="latex_booktabs", colalign=_aligns(head), disable_numparse=True)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}", _latex_symbols(grid)]
        if table.notes:
            lines.append(r"\par\footnotesize " + r" \\ ".join(latex_escape(n) for n in table.notes))
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# -- CSV --------------------------------------------------------------------------------------------

def _csv_num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(round(float(value), 6))


def _csv_scale(table: Table) -> int | str:
    """The `scale` column: 100 when every column is printed × 100 (the built-in metrics), else each column's."""
    scales = [int(c.scale) for c in table.columns]
    return scales[0] if len(set(scales)) == 1 else "/".join(map(str, scales))


def render_csv(tables: list[Table]) -> str:
    """Wide CSV, one line per table row; numbers scaled as in the tables (see the `scale` column)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    metric_cols = ("mean", "std", "n", "best", "paper_mean", "paper_std", "paper_table", "diff", "paper_verdict")
    width = max((len(t.columns) for t in tables), default=0)
    head = ["dataset", "synthetic", "selection", "protocol", "layout", "attribute", "method", "arch", "variant",
            "n_seeds", "seeds", "flag", "scale"]
    for i in range(width):
        head += [f"col{i + 1}"] + [f"col{i + 1}_{m}" for m in metric_cols]
    writer.writerow(head)
    for table in tables:
        for row in table.rows:
            line = [table.dataset, table.synthetic, table.selection, table.protocol, table.layout,
                    table.attribute or "", row.method, row.arch, row.variant, len(row.seeds),
                    " ".join(map(str, row.seeds)), row.flag, _csv_scale(table) if table.columns else 100]
            for col in table.columns:
                line += _csv_cell(col, row.cells.get(col.key))
            writer.writerow(line)
    return buf.getvalue()


def _csv_cell(col: Column, cell: Cell | None) -> list:
    if cell is None:
        return [col.key] + [""] * 9
    paper = cell.paper
    return [col.key, _csv_num(cell.mean), _csv_num(cell.std), cell.n, int(cell.best),
            _csv_num(paper.mean if paper else None), _csv_num(paper.std if paper else None),
            paper.table if paper else "", _csv_num(cell.diff), cell.verdict]


# -- HTML -------------------------------------------------------------------------------------------

def render_html_table(table: Table) -> str:
    """One <table> with caption and notes; best values in <strong>; the paper's value and Δ sit under ours."""
    esc = html.escape
    cls = "synthetic" if table.synthetic else "real"
    out = [f'<div class="table-block {cls}">', f"<h3>{esc(table.title)}</h3>", "<table>",
           f"<caption>{esc(table.caption)}</caption>", "<thead><tr>"]
    out += [f"<th>{esc(h)}</th>" for h in ["method", "arch", "n"] + [f"{c.label} {c.arrow}" for c in table.columns]]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = [row.label, row.arch, _n_text(row.seeds, row.flag)]
        line = [f"<td>{esc(t)}</td>" for t in cells]
        for col in table.columns:
            cell = row.cells.get(col.key)
            text = esc(cell_text(cell))
            if cell is not None and cell.best:
                text = f"<strong>{text}</strong>"
            if table.compare and cell is not None and cell.paper is not None:
                text += (f'<div class="paper">paper {esc(paper_text(cell, _default_table(table)))} · '
                         f"Δ {esc(fmt(cell.diff, signed=True))} · {esc(cell.verdict)}</div>")
            line.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(line) + "</tr>")
    out.append("</tbody></table>")
    if table.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in table.notes) + "</ul>")
    out.append("</div>")
    return "\n".join(out)
