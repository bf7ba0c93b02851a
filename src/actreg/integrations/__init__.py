"""Integrations with training frameworks; each imports its framework only when used.

* :mod:`actreg.integrations.lightning`: a LightningModule mixin and a Lightning callback.
"""
