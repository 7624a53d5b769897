"""Figures and tables, one function each, made from `results/` alone (no training).

`python -m plots [--results DIR] [--out DIR]` rebuilds all of them.
"""


def of_suites(frame, *suites: str):
    """The rows of some suites: the report's table functions take runs already chosen (they
    know no suite by name); the figures, tables and README blocks choose them here."""
    return frame[frame["suite"].isin(suites)] if not frame.empty else frame
