"""lab.units: the one byte formatter every report uses."""

from __future__ import annotations

import pytest

from lab.units import GiB, human_bytes


@pytest.mark.parametrize("n, digits, text", [
    (1.5e9, 2, "1.40 GiB"), (3 * GiB, 1, "3.0 GiB"), (2**21, 2, "2.00 MiB"), (5 * 2**40, 0, "5 TiB"),
    (1023, 2, "1023 B"), (0, 2, "0 B"), (-2**21, 2, "-2.00 MiB"), (None, 2, "-"),
])
def test_human_bytes_picks_the_largest_binary_unit(n: float | None, digits: int, text: str) -> None:
    assert human_bytes(n, digits) == text


def test_reports_write_sizes_with_it() -> None:
    from lab import env

    # The doctor and the planner agree on how a size reads (they once had a formatter each).
    assert env.check_memory(2 * GiB, 2**29).detail == "2.0 GiB total, 512.0 MiB available"
    assert env.check_disk(2**29, True, "/runs")[-1].detail == "512.00 MiB free under /runs (< 2 GiB)"
