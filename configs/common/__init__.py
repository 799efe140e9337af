"""Shared config blocks imported by the experiment files."""
