"""Measurements of the pack's costs, each a command run from the pack's folder: ``python -m benchmarks.<name>``."""
