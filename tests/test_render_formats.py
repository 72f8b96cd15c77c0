"""Markdown and LaTeX tables (drawn by tabulate): title, caption, notes, best marking, dashes for missing
values and escaping, checked cell by cell on a hand-built table."""

from __future__ import annotations

import math
import re

import pytest

from fairbench.report.paper import PaperValue
from fairbench.report.render import render_latex, render_markdown
from fairbench.report.tables import Cell, Column, Row, Table

NAN = math.nan


@pytest.fixture()
def table() -> Table:
    columns = [Column("es_auc", "ES-AUC", "es_auc"), Column("dpd", "DPD", "dpd")]
    rows = [
        Row("a_b|c", "b16", "x=50%", {"es_auc": Cell(71.234, 1.5, 2, (0, 1), best=True, paper=PaperValue(70.0, NAN, 4)),
                                      "dpd": Cell(9.0, NAN, 1, (0,))}, seeds=(0, 1), flag="missing 2"),
        Row("clip", "b16", "", {"es_auc": Cell(60.0, 2.0, 3, (0, 1, 2), paper=PaperValue(62.67, 3.15, 1))},
            seeds=(0, 1, 2)),
    ]
    return Table(title="Race & friends #1", caption="mean ± std; ↑ higher is better", layout="table1",
                 dataset="fairvlmed", synthetic=False, selection="val", attribute="race", columns=columns,
                 rows=rows, notes=["⚠ a_b|c/b16: seeds 0,1 (missing 2)", "costs $5 {sic}"], compare=True,
                 paper_table=1)


def _md_rows(text: str) -> list[list[str]]:
    """Cells of every `| ... |` line, splitting on unescaped pipes and unescaping them."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_markdown_cells_title_caption_notes(table):
    md = render_markdown([table])
    head, rule, first, second = _md_rows(md)
    assert head == ["method", "arch", "n", "ES-AUC ↑", "paper ES-AUC", "Δ", "verdict", "DPD ↓", "paper DPD", "Δ",
                    "verdict"]
    assert [c.startswith(":") for c in rule] == [True, True] + [False] * 9
    assert all(c.endswith(":") for c in rule[2:])  # numbers right-aligned
    # verdicts: 70.00 lies in 71.23 ± t(0.975, 1)·1.5/√2 = [57.8, 84.7]; 62.67 in 60 ± t(0.975, 2)·2/√3 = [55.0, 65.0]
    assert first == ["a_b|c [x=50%]", "b16", "2 ⚠", "**71.23 ± 1.50**", "70.00 (T4)", "+1.23", "inside", "9.00 ± –",
                     "–", "–", "–"]
    assert second == ["clip", "b16", "3", "60.00 ± 2.00", "62.67 ± 3.15", "-2.67", "inside", "–", "–", "–", "–"]
    assert md.startswith("### Race & friends #1\n\n_mean ± std; ↑ higher is better_\n\n")
    assert "- ⚠ a_b\\|c/b16: seeds 0,1 (missing 2)\n- costs $5 {sic}\n" in md


def _latex_rows(text: str) -> list[list[str]]:
    body = text.split("\\midrule\n")[1].split("\n\\bottomrule")[0]
    return [[c.strip() for c in ln.removesuffix("\\\\").split(" & ")] for ln in body.splitlines()]


def test_latex_booktabs_escaping_and_bold(table):
    tex = render_latex([table])
    assert tex.count(r"\begin{table}") == 1 and r"\begin{tabular}{llrrrrrrrrr}" in tex
    assert r"\caption{Race \& friends \#1. mean $\pm$ std; $\uparrow$ higher is better}" in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule") < tex.index(r"\end{table}")
    first, second = _latex_rows(tex)
    assert first == [r"a\_b|c [x=50\%]", "b16", "2 (!)", r"\textbf{71.23 $\pm$ 1.50}", "70.00 (T4)", "+1.23",
                     "inside", r"9.00 $\pm$ --", "--", "--", "--"]
    assert second == ["clip", "b16", "3", r"60.00 $\pm$ 2.00", r"62.67 $\pm$ 3.15", "-2.67", "inside", "--", "--",
                      "--", "--"]
    assert r"\par\footnotesize (!) a\_b|c/b16: seeds 0,1 (missing 2) \\ costs \$5 \{sic\}" in tex
    assert "\ue000" not in tex and "\ue001" not in tex
