"""Metrics, predictions, fusion ensembles, tables and plots."""
