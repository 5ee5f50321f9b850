"""Sizes as people read them: the one byte formatter of the lab, so every report writes them alike.

    from lab.units import GiB, human_bytes
    human_bytes(1.5e9)            # "1.40 GiB"
    human_bytes(3 * GiB, digits=1)  # "3.0 GiB"
    human_bytes(-2**21)           # "-2.00 MiB" (a negative headroom reads as one)
    human_bytes(None)             # "-": a size nobody could read

``lab plan``'s report, ``lab doctor``'s report, the widgets and the notebooks all call it. It
imports nothing from the lab, so any module can.
"""

from __future__ import annotations

GiB = 2**30
"""Bytes in a gibibyte."""
_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def human_bytes(n: float | None, digits: int = 2) -> str:
    """``n`` bytes in the largest binary unit it reaches, with ``digits`` decimals; None -> ``"-"``."""
    if n is None:
        return "-"
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)} B"
