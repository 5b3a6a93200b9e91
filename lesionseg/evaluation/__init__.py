"""Metrics, evaluation, mask clean-up, paired statistics, comparisons and the report."""
