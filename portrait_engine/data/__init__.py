"""Datasets: readers for the real data formats and synthetic generators (``data.faces`` for RI)."""
