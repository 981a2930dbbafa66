"""Benchmarks whose tables are committed under ``results/`` (each writes its own command beside its table)."""
