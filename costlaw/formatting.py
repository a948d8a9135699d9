"""Human-readable numbers and aligned text tables for reports and the command line."""

from typing import Sequence


def _scaled(value: float, unit: str, prefixes: Sequence[str], base: float = 1000.0) -> str:
    scaled, index = float(value), 0
    while abs(scaled) >= base and index < len(prefixes) - 1:
        scaled, index = scaled / base, index + 1
    return f"{scaled:.2f} {prefixes[index]}{unit}".rstrip()


def human_flops(value: float) -> str:
    return _scaled(value, "FLOP", ["", "K", "M", "G", "T", "P", "E"])


def human_bytes(value: float) -> str:
    return _scaled(value, "B", ["", "K", "M", "G", "T", "P"])


def human_count(value: float) -> str:
    return _scaled(value, "", ["", "K", "M", "B", "T"])


def render_rows(rows: list[list[str]]) -> str:
    """Align cells: the label column left, the value columns right; one-cell rows are headings."""
    widths = [max(len(row[i]) for row in rows if len(row) > 1 and i < len(row))
              for i in range(max(len(row) for row in rows))]
    lines = []
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
            continue
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i + 1]) for i, cell in enumerate(row[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
