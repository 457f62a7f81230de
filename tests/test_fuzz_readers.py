"""Fuzzed corpora (benchmarks/fuzz_readers.py): no exception escapes the reader, every line is one row."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_readers import LAYOUTS, LINES, ReaderWorld, check_reader

WORLD = ReaderWorld()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=LINES, layout=st.sampled_from(LAYOUTS))
def test_no_line_escapes_the_reader(lines, layout):
    check_reader(WORLD, lines, layout)
