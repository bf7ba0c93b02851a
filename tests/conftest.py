import pytest
import torch

from actreg import ActregError
from actreg._cpp import ENV, Backend, env_mode


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The C++ kernels: a test module sets KERNELS ("sparse" or "monitor") and asks for the `cpp`
# fixture where a test needs them built; everything else runs on the default path
# (ACTREG_EXTENSION decides) or on the backend a test passes.
EXTENSIONS = {
    "sparse": ("actreg_sparse", "sparse.cpp", "the C++ sparse kernels"),
    "monitor": ("actreg_monitor", "monitor.cpp", "the C++ Monitor kernel"),
}


@pytest.fixture(scope="session")
def _built_kernels():
    """Backends loaded in this session, or why not, by KERNELS name."""
    return {}


@pytest.fixture
def cpp(request, _built_kernels):
    """The test module's C++ kernels as a loaded :class:`actreg._cpp.Backend` (built once per
    machine, under a minute without a cache). Skipped where they do not build or with
    ACTREG_EXTENSION=0; failed where ACTREG_EXTENSION=1 requires them."""
    which = request.module.KERNELS
    mode = env_mode()
    if which not in _built_kernels:
        if mode == "off":
            _built_kernels[which] = f"{ENV}=0"
        else:
            backend = Backend(*EXTENSIONS[which], mode="required")
            try:
                backend.load()
                _built_kernels[which] = backend
            except ActregError as err:
                _built_kernels[which] = str(err)
    built = _built_kernels[which]
    if isinstance(built, str):
        if mode == "required":
            pytest.fail(f"the C++ kernels ({which}) did not build and {ENV}=1: {built}")
        pytest.skip(f"the C++ kernels ({which}) are not used here: {built}")
    return built
