"""Figures and tables, one function each, made from `results/` alone (no training).

`python -m plots [--results DIR] [--out DIR]` rebuilds all of them.
"""
