"""What the revival tests share (tests/test_revival.py, tests/test_revive_rate.py): which
units they kill, how they kill them, and the firing rate they read back."""

import torch

DEAD = [0, 2, 5]


def kill(model):
    """Units ``DEAD`` of ``model.fc`` never fire again (tiny weights, bias -100)."""
    with torch.no_grad():
        model.fc.weight[DEAD] *= 0.01
        model.fc.bias[DEAD] = -100.0


def firing(model, x, dim):
    """Each unit's share of positions where ``model.act`` is positive on ``x`` (units on
    ``dim``)."""
    seen = []
    handle = model.act.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    out = seen[0].movedim(dim, -1)
    return (out.reshape(-1, out.shape[-1]) > 0).float().mean(0)
