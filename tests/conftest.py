import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Optional C++ kernels: a test module sets KERNELS to the actreg module that holds them
# (its `_EXT` and `load_extension()`); its tests then run on the PyTorch path unless they
# ask for the `cpp` fixture.


@pytest.fixture(autouse=True)
def _torch_kernels(request, monkeypatch):
    kernels = getattr(request.module, "KERNELS", None)
    if kernels is not None:
        monkeypatch.setattr(kernels, "_EXT", False)


@pytest.fixture(scope="session")
def _built_kernels():
    """Extension modules built in this session, by kernel module name (None: no build)."""
    return {}


@pytest.fixture
def cpp(request, monkeypatch, _built_kernels):
    """The test module's C++ kernels, loaded (built once per session, under a minute
    without a cache). Skipped where they do not build, failed if ACTREG_REQUIRE_EXTENSION
    is set."""
    kernels = request.module.KERNELS
    name = kernels.__name__
    if name not in _built_kernels:
        saved, kernels._EXT = kernels._EXT, None
        try:
            _built_kernels[name] = kernels._EXT if kernels.load_extension() else None
        finally:
            kernels._EXT = saved
    built = _built_kernels[name]
    if built is None:
        if os.environ.get("ACTREG_REQUIRE_EXTENSION"):
            pytest.fail(
                f"the C++ kernels of {name} did not build (ACTREG_REQUIRE_EXTENSION is set)"
            )
        pytest.skip(f"the C++ kernels of {name} do not build here")
    monkeypatch.setattr(kernels, "_EXT", built)
    return built
