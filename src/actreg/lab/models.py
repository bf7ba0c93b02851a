"""The experiments' models, built from named parts so that penalties can be attached by name.

Every hidden activation is its own module (``act1``, ``encoder.code``, ...), which is what
:func:`actreg.attach` and :class:`actreg.Monitor` hook.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from actreg._errors import ActregError

__all__ = ["ACTIVATIONS", "CNN", "Autoencoder", "activation", "mlp"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softplus", "linear")


def activation(name: str) -> nn.Module:
    """An activation module by name."""
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "softplus": nn.Softplus,
        "linear": nn.Identity,
    }
    if name not in table:
        raise ActregError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")
    return table[name]()


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    act: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multilayer perceptron ``fc1, act1, [drop1], fc2, act2, ..., out``.

    Example:
        >>> mlp(784, [1000, 1000, 1000], 10)[:2]
        Sequential(
          (fc1): Linear(in_features=784, out_features=1000, bias=True)
          (act1): ReLU()
        )
    """
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        parts[f"fc{i}"] = nn.Linear(width, h)
        parts[f"act{i}"] = activation(act)
        if dropout:
            parts[f"drop{i}"] = nn.Dropout(dropout)
        width = h
    parts["out"] = nn.Linear(width, out_features)
    return nn.Sequential(parts)


class Autoencoder(nn.Module):
    """An autoencoder ``encoder -> code -> decoder`` with a named code activation.

    ``encoder.code`` is the code activation (what the sparse penalty targets): the named
    activation, or ``code_layer`` when given (a TopK, BatchTopK or JumpReLU code); hidden
    encoder layers are ``encoder.act1, ...`` and decoder layers ``decoder.act1, ...``.
    With ``unit_norm_decoder`` the decoder's code-to-next-layer columns are renormalized
    to unit length after each optimizer step (call :meth:`normalize_decoder`), so the
    penalty cannot be dodged by shrinking the code and growing the decoder weights.

    Example:
        >>> ae = Autoencoder(64, 256)
        >>> ae(torch.randn(2, 64)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        in_features: int,
        code: int,
        hidden: Sequence[int] = (),
        act: str = "relu",
        code_act: str | None = None,
        code_layer: nn.Module | None = None,
        unit_norm_decoder: bool = False,
    ) -> None:
        super().__init__()
        enc: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, h in enumerate(hidden, start=1):
            enc[f"fc{i}"] = nn.Linear(width, h)
            enc[f"act{i}"] = activation(act)
            width = h
        enc["fc_code"] = nn.Linear(width, code)
        enc["code"] = code_layer if code_layer is not None else activation(code_act or act)
        dec: OrderedDict[str, nn.Module] = OrderedDict()
        width = code
        for i, h in enumerate(reversed(hidden), start=1):
            dec[f"fc{i}"] = nn.Linear(width, h)
            dec[f"act{i}"] = activation(act)
            width = h
        dec["out"] = nn.Linear(width, in_features)
        self.encoder = nn.Sequential(enc)
        self.decoder = nn.Sequential(dec)
        self.unit_norm_decoder = unit_norm_decoder
        if unit_norm_decoder:
            self.normalize_decoder()

    def encode(self, x: Tensor) -> Tensor:
        """The code for ``x``."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(pre, code, x_hat)``: the code's pre-activations, the code, the reconstruction.

        One forward pass, through the same modules as :meth:`forward` (hooks on
        ``encoder.code`` and the hidden layers fire once); what an auxiliary loss on the
        pre-activations (:class:`actreg.AuxK`) needs.

        Example:
            >>> pre, code, x_hat = Autoencoder(8, 16).parts(torch.randn(2, 8))
            >>> pre.shape, code.shape, x_hat.shape
            (torch.Size([2, 16]), torch.Size([2, 16]), torch.Size([2, 8]))
        """
        pre = self.encoder[:-1](x)
        code = self.encoder[-1](pre)
        return pre, code, self.decoder(code)

    @property
    def code_decoder(self) -> nn.Linear:
        """The linear layer that reads the code (its columns are the learned features)."""
        first = self.decoder[0]
        assert isinstance(first, nn.Linear)
        return first

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each code unit's decoder column to unit L2 norm (if enabled)."""
        if self.unit_norm_decoder:
            w = self.code_decoder.weight
            w.div_(w.norm(dim=0, keepdim=True).clamp_min(1e-8))


class CNN(nn.Module):
    """A small CNN: two 3x3 conv blocks (``features.act1``, ``features.act2``), then an MLP head.

    Example:
        >>> CNN(1, 10, (8, 8))(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        image_shape: tuple[int, int],
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        act: str = "relu",
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, c1, 3, padding=1),
                act1=activation(act),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(c1, c2, 3, padding=1),
                act2=activation(act),
                pool2=nn.MaxPool2d(2),
            )
        )
        h, w = image_shape[0] // 4, image_shape[1] // 4
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc=nn.Linear(c2 * h * w, hidden),
                act=activation(act),
                out=nn.Linear(hidden, n_classes),
            )
        )
        self.image_shape = tuple(image_shape)
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # flattened images
            x = x.view(x.shape[0], self.in_channels, *self.image_shape)
        return self.classifier(self.features(x))
