"""``python -m bench.quality``: see ``__main__``."""
