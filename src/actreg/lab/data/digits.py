"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

scikit-learn is an optional dependency (the ``experiments`` extra); it is imported only when
the digits are loaded.
"""

from __future__ import annotations

import numpy as np

from actreg._errors import ActregError

__all__ = ["load_digits_arrays"]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``(x, y)``: x float32 (1797, 64) in [0, 1] (pixels / 16), y int64.

    Example:
        >>> x, y = load_digits_arrays()
        >>> x.shape, float(x.max()), int(y.max())
        ((1797, 64), 1.0, 9)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ActregError(
            "the 'digits' data set needs scikit-learn: pip install 'actreg[experiments]' "
            "(or pip install scikit-learn)"
        ) from err
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y
