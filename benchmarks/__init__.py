"""eventlib's benchmarks: run them with ``make bench`` (``python -m benchmarks.run``).

They are measured, never asserted: the figures go to ``docs/benchmarks.md``.
"""
