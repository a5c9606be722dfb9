"""The D³ effect in miniature: `python -m d3_training.experiments --out DIR [--smoke]` (see runner.py)."""

from d3_training.experiments.runner import Budget, run_all, table, variants

__all__ = ["Budget", "run_all", "table", "variants"]
