"""Table layouts: each a registered builder (`register_layout`) that `fairbench table --layout NAME` and the HTML
report use. A layout turns one `Scope` (runs that share a dataset, selection rule and protocol, and the attributes
wanted) into tables, usually with one of the two shapes of fairbench.report.tables: a table per attribute with a
column per metric, or one table of a metric with a column per attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fairbench.registry import LAYOUTS

if TYPE_CHECKING:  # the builders import pandas only when they build: listing layouts (--help) stays light
    from fairbench.report.tables import Scope, Table


@dataclass(frozen=True)
class TableLayout:
    """`build` makes the tables of one scope. `report_heading` titles its section of the HTML report (None: not in
    the report; `{metrics}` stands for the table metrics' labels); `report_paper` puts the paper's numbers beside
    real-data rows there."""

    name: str
    description: str
    build: Callable[[Scope], list[Table]]
    report_heading: str | None = None
    report_paper: bool = False


def register_layout(layout: TableLayout) -> TableLayout:
    """Make `layout` available as `fairbench table --layout NAME` (and, with a `report_heading`, in the report)."""
    return LAYOUTS.add(layout)


def get_layout(name: str) -> TableLayout:
    return LAYOUTS.get(name)


def list_layouts() -> list[str]:
    return LAYOUTS.names()


def _table1(scope: Scope) -> list[Table]:
    from fairbench.metrics.catalog import table_metrics
    from fairbench.report.tables import per_attribute_tables

    return per_attribute_tables(scope, [m.name for m in table_metrics()], "Table 1 layout · attribute: {attribute}",
                                paper_table=1)


def _ablation(scope: Scope) -> list[Table]:
    from fairbench.report.tables import across_attributes_table

    return across_attributes_table(scope, "es_auc", "Ablation layout · ES-AUC", lead="ES-AUC per evaluation attribute")


register_layout(TableLayout(
    "table1", "one table per attribute, a column per table metric (ES-AUC, AUC, DPD, EOD; `fairbench list metrics`)",
    _table1, report_heading="Table 1 layout: {metrics} per attribute", report_paper=True))
register_layout(TableLayout(
    "ablation", "ES-AUC per attribute as columns (paper Tables 2–6)", _ablation,
    report_heading="Ablation layout: ES-AUC per attribute"))
