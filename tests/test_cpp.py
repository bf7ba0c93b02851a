"""actreg._cpp: choosing the C++ kernels (ACTREG_EXTENSION), building and caching them, the
background build, and the .cpp files shipped in a wheel."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import actreg._cpp as C
from actreg import ActregError
from actreg._cpp import ENV, Backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty extension cache, so that nothing is loaded from an earlier build."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext"


def _backend(mode: str | None = None, stem: str = "actreg_test") -> Backend:
    """A backend under a name no other test loads (the process keeps loaded modules)."""
    return Backend(stem, "monitor.cpp", "the test kernel", mode=mode)


@pytest.mark.parametrize(
    ("value", "mode"),
    [(None, "auto"), ("auto", "auto"), ("", "auto"), (" AUTO ", "auto"), ("0", "off"),
     ("1", "required")],
    ids=["unset", "auto", "empty", "spaces-case", "0", "1"],
)  # fmt: skip
def test_env_mode(value, mode, monkeypatch):
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    assert C.env_mode() == mode


def test_env_mode_bad_value(monkeypatch):
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ActregError, match=r"ACTREG_EXTENSION='yes'.*0 .*1 .*auto"):
        C.env_mode()
    with pytest.raises(ActregError, match="ACTREG_EXTENSION"):
        _backend().load()


def test_bad_mode():
    with pytest.raises(ActregError, match="mode must be"):
        Backend("actreg_test", "monitor.cpp", "x", mode="on")


@pytest.mark.parametrize("call", ["load", "poll"])
@pytest.mark.parametrize("how", ["env", "argument"])
def test_off_never_builds(call, how, fresh_cache, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(C, "build", lambda *a: pytest.fail("built with mode off"))
    if how == "env":
        monkeypatch.setenv(ENV, "0")
    b = _backend(None if how == "env" else "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(b, call)() is None
    assert b.decided and b.how.startswith("not used (mode off")


@pytest.mark.parametrize("call", ["load", "poll"])
@pytest.mark.parametrize("missing", ["compiler", "ninja"], ids=["no-compiler", "no-ninja"])
def test_auto_without_a_compiler_warns_once_and_uses_pytorch(
    call, missing, fresh_cache, monkeypatch
):
    monkeypatch.delenv(ENV, raising=False)
    if missing == "compiler":
        monkeypatch.setenv("CXX", "/nonexistent/c++")
    else:
        import torch.utils.cpp_extension as ext

        monkeypatch.setattr(ext, "is_ninja_available", lambda: False)
    b = _backend()
    want = "no C\\+\\+ compiler.*set CXX" if missing == "compiler" else "ninja is not installed"
    with pytest.warns(UserWarning, match=f"not available here \\({want}.*ACTREG_EXTENSION=0"):
        assert getattr(b, call)() is None
    assert b.how.startswith("build failed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided: no second warning
        assert b.load() is None and b.poll() is None


@pytest.mark.parametrize("call", ["load", "poll"])
def test_required_without_a_compiler_is_an_error(call, fresh_cache, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(ActregError, match=r"did not build \(no C\+\+ compiler.*ACTREG_EXTENSION=1"):
        getattr(_backend(), call)()


def test_cache_name_per_machine_and_source(monkeypatch, tmp_path):
    src = C.CSRC / "monitor.cpp"
    name = C.ext_name("actreg_monitor", src)
    assert name.startswith("actreg_monitor_") and name == C.ext_name("actreg_monitor", src)
    monkeypatch.setattr(C, "_cpu_id", lambda: "another CPU")
    assert C.ext_name("actreg_monitor", src) != name
    monkeypatch.undo()
    edited = tmp_path / "monitor.cpp"
    edited.write_text(src.read_text() + "\n// edited\n")
    assert C.ext_name("actreg_monitor", edited) != name


def test_build_protocol(fresh_cache, monkeypatch, caplog):
    """A stale torch baton is removed, one log line, the success marker is written last; a
    second backend loads from the cache without building."""
    import torch.utils.cpp_extension as ext

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(C, "compiler_problem", lambda: None)
    name, folder, ok = C._paths("actreg_test_proto", "monitor.cpp")
    (folder / "lock").write_text("")  # left by a killed build
    built = []

    def fake_load(name, sources, extra_cflags, build_directory, verbose):
        assert not (Path(build_directory) / "lock").exists() and not ok.exists()
        assert sources == [str(C.CSRC / "monitor.cpp")] and "-march=native" in extra_cflags
        built.append(name)
        return object()

    monkeypatch.setattr(ext, "load", fake_load)
    monkeypatch.delitem(sys.modules, name, raising=False)
    with caplog.at_level(logging.WARNING, logger="actreg"):
        first = Backend("actreg_test_proto", "monitor.cpp", "the test kernel")
        module = first.load()
    assert built == [name] and ok.is_file() and first.how == "built"
    assert [r.getMessage() for r in caplog.records if "building" in r.getMessage()] == [
        f"actreg: building the test kernel for this machine (once, under a minute; cached in "
        f"{folder})"
    ]
    second = Backend("actreg_test_proto", "monitor.cpp", "the test kernel")
    assert second.load() is module and second.how == "loaded from the cache"
    assert built == [name]
    monkeypatch.delitem(sys.modules, name)


def test_concurrent_builds_build_once(fresh_cache, monkeypatch):
    """Threads (and processes: the same file lock) asking for one extension at once: one
    builds, the others wait for it and load its result."""
    import threading
    import time

    import torch.utils.cpp_extension as ext

    monkeypatch.setattr(C, "compiler_problem", lambda: None)
    name, _, ok = C._paths("actreg_test_threads", "monitor.cpp")
    monkeypatch.delitem(sys.modules, name, raising=False)
    built, module = [], object()

    def slow_load(name, **kwargs):
        built.append(name)
        time.sleep(0.3)
        return module

    monkeypatch.setattr(ext, "load", slow_load)
    got = []
    threads = [
        threading.Thread(
            target=lambda: got.append(C.build("actreg_test_threads", "monitor.cpp", "t"))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [name] and got == [module] * 3 and ok.is_file()
    monkeypatch.delitem(sys.modules, name)


class _FakeProc:
    def __init__(self) -> None:
        self.returncode: int | None = None
        self.pid = 12345

    def poll(self) -> int | None:
        return self.returncode


@pytest.mark.parametrize("outcome", [0, 1], ids=["built", "failed"])
def test_poll_builds_in_the_background(outcome, fresh_cache, monkeypatch, caplog):
    """poll() never waits: None while the build process runs, then the module (or one
    warning and None when the build failed)."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(C, "_POLL_EVERY_S", 0.0)
    monkeypatch.setattr(C, "compiler_problem", lambda: None)
    cached = [False]
    monkeypatch.setattr(C, "is_cached", lambda *a: cached[0])
    module = object()
    monkeypatch.setattr(C, "build", lambda *a: module)
    proc = _FakeProc()
    spawned = []
    b = _backend(stem="actreg_test_poll")
    monkeypatch.setattr(b, "_spawn", lambda: spawned.append(1) or proc)
    with caplog.at_level(logging.WARNING, logger="actreg"):
        assert b.poll() is None and b.poll() is None
    assert spawned == [1] and b.how == "building in the background (process 12345)"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "building the test kernel for this machine in the background" in line
    proc.returncode = outcome
    cached[0] = outcome == 0
    if outcome == 0:
        assert b.poll() is module and b.how == "loaded from the cache"
    else:
        with pytest.warns(UserWarning, match="background build exited with 1; see .*\\.log"):
            assert b.poll() is None
    assert spawned == [1]


def test_poll_loads_a_cached_build_at_once(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(C, "is_cached", lambda *a: True)
    module = object()
    monkeypatch.setattr(C, "build", lambda *a: module)
    b = _backend(stem="actreg_test_cached")
    monkeypatch.setattr(b, "_spawn", lambda: pytest.fail("spawned a build"))
    assert b.poll() is module


def test_copies_decide_again_and_deepcopy_shares():
    b = _backend("off")
    b.load()
    again = pickle.loads(pickle.dumps(b))
    assert not again.decided and (again.stem, again.mode) == (b.stem, b.mode)
    assert copy.deepcopy(b) is b


def test_builds_really(monkeypatch):
    """The real thing on this machine (cached after the first run): the Monitor kernel
    loads through a fresh backend and computes."""
    if C.env_mode() == "off":
        pytest.skip(f"{ENV}=0")
    b = Backend("actreg_monitor", "monitor.cpp", "the C++ Monitor kernel", mode="auto")
    with warnings.catch_warnings(record=True):
        module = b.load()
    if module is None:
        if C.env_mode() == "required":
            pytest.fail(b.how)
        pytest.skip(b.how)
    norms, counts, top = module.batch_stats(torch.tensor([[1.0, 0.0]]), 1, 0.0, None)
    assert norms.tolist() == [[1.0], [1.0]]
    assert counts.tolist() == [1, 0] and float(top) == 1.0


def _wheel(tmp_path: Path) -> Path:
    """Build actreg's wheel offline from a copy of the sources (no build/ in the tree)."""
    import shutil

    src = tmp_path / "src_copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(src)],
        check=True,
    )  # fmt: skip
    (wheel,) = out.glob("actreg-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_the_cpp_files_and_an_installed_copy_builds_them(tmp_path):
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {"actreg/csrc/sparse.cpp", "actreg/csrc/monitor.cpp"} <= set(names)
    if C.compiler_problem() is not None or C.env_mode() == "off":
        pytest.skip("no compiler here: the wheel's contents are checked, not a build")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        check=True,
    )  # fmt: skip
    script = (
        "import actreg, actreg._monitor_kernels as K, torch, sys\n"
        "assert actreg.__file__.startswith(sys.argv[1]), actreg.__file__\n"
        "b = K.backend(); m = b.load(); assert m is not None and b.how == 'built', b.how\n"
        "print(m.batch_stats(torch.ones(2, 3), 1, 0.0, None)[1].tolist())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env[ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", script, str(site)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[2, 2, 2]"
