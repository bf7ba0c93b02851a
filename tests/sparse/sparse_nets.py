"""What the actreg.sparse tests share: tolerances and a small ReLU MLP with most units off."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Equal within the tolerance of ``dtype``."""
    return torch.allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    """fc1, act1, dropout, fc2, act2, identity, fc3; negative biases (most hidden units
    off, as after L1 training); in eval mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(20, 48),
            act1=nn.ReLU(),
            drop=nn.Dropout(0.5),
            fc2=nn.Linear(48, 48),
            act2=nn.ReLU(),
            ident=nn.Identity(),
            fc3=nn.Linear(48, 5),
        )
    ).to(dtype)
    with torch.no_grad():
        net.fc1.bias.sub_(0.5)
        net.fc2.bias.sub_(0.3)
    return net.eval()
