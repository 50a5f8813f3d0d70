"""Figures, the report page, and `reproduce`, which re-runs the reference experiments into it."""
