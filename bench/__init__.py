"""Benchmarks: scripts that print measurements (run them with ``.venv/bin/python bench/<name>.py``)."""
