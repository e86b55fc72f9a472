"""Latency: per-query timing recipes, the report with its targets, and its plots."""
