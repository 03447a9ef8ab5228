"""Showing scored rows: the terminal table of a stage, and the per-set table for `dvc plots`."""

from __future__ import annotations

from rich.table import Table

COLUMNS = ("fd", "kid", "precision", "recall", "recall_tail", "density", "coverage", "copy_fraction")


def cell(values: dict, name: str, digits: str = ".3g") -> str:
    if name not in values:
        return "-"
    sd = values.get(f"{name}_sd")
    return f"{values[name]:{digits}}" + (f" ± {sd:.2g}" if sd is not None else "")


def metrics_table(title: str, rows: dict[str, dict], space: str) -> Table:
    """One line per summarised row: each metric's mean ± sd over sets in `space`, FD also as a multiple of the
    floor's, class consistency where scored."""
    table = Table(title=title)
    for column in ("row", *COLUMNS, "fd / floor", "class cons."):
        table.add_column(column, justify="left" if column == "row" else "right")
    for name, row in rows.items():
        values = row[space]
        ratio = values.get("fd_over_floor")
        table.add_row(name, *(cell(values, column) for column in COLUMNS),
                      "-" if ratio is None else f"{ratio:.2f}", cell(row, "class_consistency"))
    return table


def set_rows(per_set: dict[str, list[dict]]) -> list[dict]:
    """Flat rows (row, set, space, every metric, class consistency) for a CSV."""
    out = []
    for name, sets in per_set.items():
        for k, values in enumerate(sets):
            shared = {key: value for key, value in values.items() if not isinstance(value, dict)}
            for space, metrics in values.items():
                if isinstance(metrics, dict):
                    out.append({"row": name, "set": k, "space": space, **metrics, **shared})
    return out
