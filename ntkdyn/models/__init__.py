"""Flax models used across the project, each with a pure ``(apply_fn, params)`` view."""
