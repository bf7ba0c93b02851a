"""actreg's lab: the application built on the library.

Data readers and fetching (:mod:`actreg.lab.data`), models, the training loop, experiments,
coefficient search, reports, plots and the command line. The lab uses the library exactly as
a user would (``import actreg``); nothing in the library imports the lab (checked by the
import-linter contract in ``pyproject.toml``).
"""
