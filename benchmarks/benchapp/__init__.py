"""The app the benchmarks log and process events of (``benchmarks.benchapp``).

Its handlers and the bare Celery task of the comparison do the same work,
:func:`benchmarks.benchapp.counter.bump`, so that only what surrounds them
differs.
"""
