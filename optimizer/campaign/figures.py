"""How a figure is written, in every view (CLI, note, report): one format for each kind."""

from __future__ import annotations


def pct(value: float | None) -> str:
    """A top-1 fraction as the note and the report print it: 93.68%."""
    return "-" if value is None else f"{value * 100:.2f}%"


def points(value: float | None) -> str:
    """An accuracy difference (fraction) in percentage points, signed: +0.74 pt."""
    return "-" if value is None else f"{value * 100:+.2f} pt"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def speedup(value: float | None, interval: list[float] | None = None) -> str:
    """A paired speedup with its 95 % interval, as every view prints it: 1.42× [1.40–1.45]."""
    if value is None:
        return "-"
    if not interval:
        return f"{value:.2f}×"
    return f"{value:.2f}× [{interval[0]:.2f}–{interval[1]:.2f}]"
