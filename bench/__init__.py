"""Benchmarks of flowcraft-puller: the queue path, the workflow path through the real daemon
against the emulator, scaling, idle cost, and the in-memory engine for comparison.

Run ``python -m bench`` (or ``make bench``); ``bench/README.md`` explains every figure.
"""
