"""Benchmark scripts and their committed results (``results/``). Run from the repository
root as ``python -m bench.NAME``; nothing imports this package."""
