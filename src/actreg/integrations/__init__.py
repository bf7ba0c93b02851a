"""Integrations with training frameworks; each imports its framework only when used.

* :mod:`actreg.integrations.lightning`: a LightningModule mixin and a Lightning callback.
* :mod:`actreg.integrations.transformers`: a Hugging Face ``TrainerCallback`` that adds the
  penalty to the loss and logs sparsity.
"""
