"""Modules: :class:`ActivityRegularization` (Keras-style marker) and :class:`TopK`."""

from __future__ import annotations

from torch import Tensor, nn

from actreg import functional as F
from actreg._errors import ActregError
from actreg.penalties import L1L2, Penalty

__all__ = ["ActivityRegularization", "TopK"]


class ActivityRegularization(nn.Module):
    """An identity module whose output :func:`actreg.attach` penalizes.

    Put it inside ``nn.Sequential`` after the layer to regularize, then call
    ``actreg.attach(model)``. ``ActivityRegularization(l1=..., l2=...)`` is Keras'
    layer of the same name (``L1L2``).

    Example:
        >>> import torch, actreg
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
        ...                           actreg.ActivityRegularization(l1=1e-3))
        >>> reg = actreg.attach(net)
        >>> _ = net(torch.ones(2, 3)); reg.penalty().shape
        torch.Size([])
    """

    def __init__(self, penalty: Penalty | None = None, *, l1: float = 0.0, l2: float = 0.0) -> None:
        super().__init__()
        if penalty is not None and (l1 or l2):
            raise ActregError("pass either a penalty or l1=/l2=, not both")
        if penalty is not None and not isinstance(penalty, Penalty):
            raise ActregError(f"penalty must be an actreg penalty, got {penalty!r}")
        self.penalty: Penalty = penalty if penalty is not None else L1L2(l1=l1, l2=l2)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return repr(self.penalty)


class TopK(nn.Module):
    """Keep the ``k`` largest values along ``dim``, zero the rest (k-sparse / TopK SAEs).

    Example:
        >>> import torch, actreg
        >>> actreg.TopK(2)(torch.tensor([[3.0, -1.0, 2.0, 0.5]]))
        tensor([[3., 0., 2., 0.]])
    """

    def __init__(self, k: int, dim: int = -1) -> None:
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ActregError(f"TopK needs an integer k >= 1, got {k!r}")
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise ActregError(f"TopK dim must be an int, got {dim!r}")
        self.k = k
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.topk(x, self.k, self.dim)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}"
