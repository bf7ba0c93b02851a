"""The public surface: ``import actreg`` is lazy, every name resolves, nothing is shadowed."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import actreg


def _imports_torch(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_actreg_imports_neither_torch_nor_the_lab():
    probe = "import actreg, sys; print(sorted(m for m in sys.modules if m.startswith('actreg')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['actreg']"
    assert not _imports_torch("import actreg")


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["search", "--help"], ["data", "--help"]], ids=str
)
def test_cli_help_does_not_import_torch(argv):
    code = (
        f"from actreg.lab.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    assert not _imports_torch(code)


def test_all_lists_exactly_the_lazy_names():
    assert sorted(actreg.__all__) == sorted(actreg._SOURCES)


@pytest.mark.parametrize("name", actreg.__all__)
def test_every_public_name_is_its_source_object(name):
    source = importlib.import_module(actreg._SOURCES[name])
    want = source if source.__name__ == f"actreg.{name}" else getattr(source, name)
    assert getattr(actreg, name) is want
    assert name in dir(actreg)


def test_submodules_of_the_same_name_do_not_shadow_functions():
    for module in ("regularizer", "monitor", "control", "revival", "codes", "dead", "layers"):
        importlib.import_module(f"actreg.{module}")
    assert inspect.isfunction(actreg.attach) and inspect.isfunction(actreg.revive)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        actreg.nope  # noqa: B018
