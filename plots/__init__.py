"""Figures and tables, one function each, made from `results/` alone (no training).

`python -m plots [--results DIR] [--out DIR]` rebuilds all of them.
"""


def of_suites(frame, *suites: str, scale: str | None = None):
    """The rows of some suites (at one scale, if given): the report's table functions take runs
    already chosen (they know no suite by name); the figures, tables and README blocks choose
    them here."""
    if frame.empty:
        return frame
    chosen = frame["suite"].isin(suites)
    return frame[chosen & (frame["scale"] == scale)] if scale is not None else frame[chosen]
