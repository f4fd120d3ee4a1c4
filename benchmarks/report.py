"""The benchmark's table: one row per figure, with the database's own limit beside it.

`Row` is one printed line; `render_text` prints the table for a terminal and `render_markdown`
the same table for the README (`python -m benchmarks.report var/bench.json` renders a saved
run). Ratios are value / limit for rates and limit / value for
latencies, so that 100 % is always "as fast as PostgreSQL itself".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    figure: str  # "1", "4b", ...
    name: str
    value: float | None
    unit: str
    limit: float | None = None  # the raw-SQL figure measured in the same run
    higher_is_better: bool = True
    target: str = ""
    cpu: str = ""  # CPU per unit, written out
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.limit is None or not self.value or not self.limit:
            return None
        return self.value / self.limit if self.higher_is_better else self.limit / self.value

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return data


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        shown = f"{value:,.0f}"
    elif abs(value) >= 10:
        shown = f"{value:,.1f}"
    else:
        shown = f"{value:,.2f}"
    return f"{shown} {unit}".strip()


def _ratio(row: Row) -> str:
    ratio = row.ratio
    return "-" if ratio is None else f"{100 * ratio:.1f} %"


def _cells(row: Row) -> list[str]:
    return [
        row.figure,
        row.name,
        _number(row.value, row.unit),
        _number(row.limit, row.unit),
        _ratio(row),
        row.target or "-",
    ]


HEADERS = ["#", "figure", "value", "PostgreSQL alone", "ratio", "target"]


def render_text(rows: Sequence[Row]) -> str:
    table = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    right = {2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line(HEADERS), line(["-" * w for w in widths])]
    out += [line(cells) for cells in table[1:]]
    notes = [f"  {r.figure} {r.name}: {r.cpu}" for r in rows if r.cpu]
    if notes:
        out += ["", "CPU per unit of work (every process of the figure, PostgreSQL backends too):"]
        out += notes
    remarks = [f"  {r.figure} {r.name}: {r.note}" for r in rows if r.note]
    if remarks:
        out += ["", "Notes:", *remarks]
    return "\n".join(out)


def render_markdown(rows: Sequence[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = _cells(row)
        cells[5] = cells[5].replace("|", "\\|")
        out.append("| " + " | ".join(cells) + " |")
    cpu = [f"- {r.figure} {r.name}: {r.cpu}" for r in rows if r.cpu]
    if cpu:
        out += ["", "CPU per unit of work:", "", *cpu]
    notes = [f"- {r.figure} {r.name}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out)


def rows_from_json(report: dict[str, Any]) -> list[Row]:
    """The rows of a run written by `python -m benchmarks --json-out`."""
    fields = {f for f in Row.__dataclass_fields__}
    return [Row(**{k: v for k, v in row.items() if k in fields}) for row in report["table"]]


if __name__ == "__main__":
    import json
    import sys

    # `python -m benchmarks.report var/bench.json`: a saved run's table, as Markdown.
    with open(sys.argv[1] if len(sys.argv) > 1 else "var/bench.json", encoding="utf-8") as f:
        print(render_markdown(rows_from_json(json.load(f))))
