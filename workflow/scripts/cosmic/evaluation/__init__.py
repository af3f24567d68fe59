"""Repeated held-out evaluation: baselines, generation metrics, per-split tables and their summaries."""
