"""Number formatting shared by the terminal sinks (gate lines, summary table)."""

from __future__ import annotations

import math


def format_significant(value: float, digits: int = 4) -> str:
    """Fixed notation, `digits` significant digits (0.001234, 1.500, 812.4); integer parts stay whole (12346)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return f"{0.0:.{digits - 1}f}"
    rounded = float(f"{value:.{digits - 1}e}")  # round first: 9.99996 becomes 10.00, not 10.000
    magnitude = math.floor(math.log10(abs(rounded)))
    if magnitude >= digits - 1:
        return f"{value:.0f}"
    return f"{rounded:.{digits - 1 - magnitude}f}"


def format_ratio(ratio: float) -> str:
    """Two decimals (0.42x, 3.00x); two significant digits below 0.01 so a tiny ratio is not 0.00."""
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{format_significant(ratio, 2)}x"
