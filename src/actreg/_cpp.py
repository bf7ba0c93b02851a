"""actreg's C++ kernels: building them (one way for all) and choosing whether to use them.

The kernels are real C++ files shipped inside the package (``actreg/csrc/*.cpp``: the
sparse-input matmuls of :mod:`actreg.sparse`, the one-pass statistics of
:class:`actreg.Monitor`), compiled on first use with ``torch.utils.cpp_extension.load`` for
this CPU (``-O3 -march=native``; g++ or ``$CXX``, and ninja). A :class:`Backend` holds one of
them: the loaded module, or None and why (:attr:`Backend.how`); the code that runs the
kernels is handed a backend and asks it, nothing is switched globally.

Choice, by the environment variable ``ACTREG_EXTENSION``:

* ``auto`` (default): build where a compiler and ninja are present, one log line when it
  builds; where it cannot, one warning and the pure-PyTorch path.
* ``0``: never build or load; the pure-PyTorch path.
* ``1``: required: :class:`~actreg.ActregError` when it does not build (CI uses this).

Cache: torch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions/py3XY_cpu``). ``-march=native`` makes a build specific to the CPU,
so the extension's name carries a digest of the source, the flags, the torch and Python
versions and this CPU's model and feature flags: machines sharing a home folder never load
each other's build, and an edited source builds anew.

Two ways to wait for a first build (30-60 s), chosen per caller:

* :meth:`Backend.load` builds in the calling thread. :func:`actreg.sparse.convert` uses it:
  converting is a one-time setup that already calibrates its thresholds for a second or so
  per layer shape, it must calibrate the kernels it will run, and a user who converts wants
  the fast path from the first call.
* :meth:`Backend.poll` never waits: the first call starts the build in a background
  *process* and returns None (the caller keeps its PyTorch path); a later call loads the
  finished build. :class:`actreg.Monitor` uses it, so a short script (``actreg demo``) does
  not stall for a build it may not need, and its statistics are the same either way (to
  float rounding). A process rather than a thread: a thread dies with the interpreter,
  mid-build, when a script ends first; the process finishes and leaves a complete cache
  for the next run.

No half-written cache: a build holds an exclusive ``fcntl`` lock on ``<build dir>.lock`` (the
OS releases it if the builder dies), removes the ``lock`` file that torch's ``FileBaton``
leaves behind when a build is killed (torch would wait on it forever), and marks success by
writing ``<name>.ok`` atomically once the module imported. Only a marked build is imported
directly; anything else goes through torch's build again (ninja redoes what is missing).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from actreg._errors import ActregError

__all__ = ["ENV", "Backend", "build", "env_mode"]

#: The environment variable that decides whether the C++ kernels are used.
ENV = "ACTREG_EXTENSION"
CSRC = Path(__file__).resolve().parent / "csrc"
FLAGS = ["-O3", "-march=native"]
_MODES = {"auto": "auto", "": "auto", "0": "off", "1": "required"}
_POLL_EVERY_S = 0.5  # how often poll() asks a background build whether it is done
_log = logging.getLogger("actreg")


def env_mode() -> str:
    """``"auto"``, ``"off"`` or ``"required"``, from ``ACTREG_EXTENSION`` (unset: auto).

    Example:
        >>> env_mode() in ("auto", "off", "required")
        True
    """
    raw = os.environ.get(ENV, "auto").strip().lower()
    if raw not in _MODES:
        raise ActregError(
            f"{ENV}={raw!r} is not a choice: use 0 (never build the C++ kernels), 1 (required: "
            "fail if they do not build) or auto (the default: build where a compiler is present)"
        )
    return _MODES[raw]


@functools.cache
def _cpu_id() -> str:
    """This CPU's model and feature flags (what ``-march=native`` compiles for)."""
    with contextlib.suppress(OSError):
        seen: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags", "Features", "CPU part") and key not in seen:
                seen[key] = value.strip()
        if seen:
            return platform.machine() + repr(sorted(seen.items()))
    return platform.machine() + platform.processor()


def ext_name(stem: str, source: Path) -> str:
    """``stem`` plus a digest of everything a build depends on (see the module doc)."""
    h = hashlib.sha256(source.read_bytes())
    for part in (" ".join(FLAGS), torch.__version__, sys.version, _cpu_id()):
        h.update(b"\0" + part.encode())
    return f"{stem}_{h.hexdigest()[:12]}"


def _build_dir(name: str) -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def compiler_problem() -> str | None:
    """Why nothing can be built here (no compiler, no ninja), or None."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} is not on PATH (install g++, or set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes, released by the OS if we die."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own FileBaton only
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _import(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _paths(stem: str, source: str) -> tuple[str, Path, Path]:
    name = ext_name(stem, CSRC / source)
    folder = _build_dir(name)
    return name, folder, folder / f"{name}.ok"


def is_cached(stem: str, source: str) -> bool:
    """Whether a complete build of ``source`` for this machine is in the cache."""
    name, _, ok = _paths(stem, source)
    return name in sys.modules or ok.is_file()


def build(stem: str, source: str, what: str, verbose: bool = False) -> Any:
    """The extension module of ``csrc/<source>``: imported from this machine's cache, else
    compiled there first (one log line). Raises ``RuntimeError`` when it cannot be built."""
    name, folder, ok = _paths(stem, source)
    if name in sys.modules:
        return sys.modules[name]
    lib = folder / f"{name}{'.pyd' if sys.platform == 'win32' else '.so'}"
    if not ok.is_file():
        problem = compiler_problem()
        if problem:
            raise RuntimeError(problem)
        with _exclusive(folder.with_name(folder.name + ".lock")):
            if not ok.is_file():
                stale = folder / "lock"  # torch's FileBaton of a killed build: we hold the lock
                stale.unlink(missing_ok=True)
                _log.warning(
                    "actreg: building %s for this machine (once, under a minute; cached in %s)",
                    what,
                    folder,
                )
                from torch.utils.cpp_extension import load

                module = load(
                    name,
                    sources=[str(CSRC / source)],
                    extra_cflags=FLAGS,
                    build_directory=str(folder),
                    verbose=verbose,
                )
                tmp = ok.with_name(f"{ok.name}.{os.getpid()}")
                tmp.write_text(f"{what}\n")
                os.replace(tmp, ok)
                sys.modules[name] = module
                return module
    if name in sys.modules:  # another thread of this process built it meanwhile
        return sys.modules[name]
    return _import(name, lib)


def _short(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) if lines else type(err).__name__


class Backend:
    """One C++ extension of actreg: the loaded module (``module``) or None, and ``how`` that
    was decided. Decided once, on the first :meth:`load` or :meth:`poll`.

    Args:
        stem: the extension's name before the digest, e.g. ``"actreg_sparse"``.
        source: the file in ``actreg/csrc``.
        what: how messages name it.
        mode: ``"auto"``, ``"off"`` or ``"required"``; None reads ``ACTREG_EXTENSION`` when
            deciding.

    Example:
        >>> off = Backend("actreg_sparse", "sparse.cpp", "the C++ sparse kernels", mode="off")
        >>> off.load() is None, off.how
        (True, 'not used (mode off)')
    """

    def __init__(self, stem: str, source: str, what: str, mode: str | None = None) -> None:
        if mode not in (None, "auto", "off", "required"):
            raise ActregError(f'mode must be None, "auto", "off" or "required", got {mode!r}')
        self.stem, self.source, self.what, self.mode = stem, source, what, mode
        self.module: Any = None
        self.how = "not decided yet"
        self.decided = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_poll = 0.0

    def __repr__(self) -> str:
        return f"Backend({self.stem!r}, mode={self.mode!r}, how={self.how!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # a copy decides again (from the cache)
        return (Backend, (self.stem, self.source, self.what, self.mode))

    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        return self  # shared: it holds no per-model state

    def _mode(self) -> str:
        return self.mode if self.mode is not None else env_mode()

    def _decide(self, module: Any, how: str) -> Any:
        self.module, self.how, self.decided = module, how, True
        return module

    def _failed(self, mode: str, reason: str) -> None:
        if mode == "required":
            raise ActregError(
                f"{self.what} did not build ({reason}) and {ENV}=1 requires them: install g++ "
                f"and ninja, or set {ENV}=auto (fall back to PyTorch) or {ENV}=0"
            )
        warnings.warn(
            f"actreg: {self.what} are not available here ({reason}); using the slower "
            f"pure-PyTorch path. Install g++ and ninja to get them, or set {ENV}=0 to "
            "silence this.",
            stacklevel=4,
        )
        self._decide(None, f"build failed: {reason}")

    def load(self) -> Any:
        """The module, built now if needed (see the module doc); None on the PyTorch path."""
        if self.decided:
            return self.module
        with self._lock:
            if self.decided:
                return self.module
            mode = self._mode()
            if mode == "off":
                return self._decide(None, f"not used (mode off{'' if self.mode else ', ' + ENV})")
            was_cached = is_cached(self.stem, self.source)
            try:
                module = build(self.stem, self.source, self.what)
            except Exception as err:  # any build failure: the PyTorch path (or an error)
                self._failed(mode, _short(err))
                return None
            return self._decide(module, "loaded from the cache" if was_cached else "built")

    def poll(self) -> Any:
        """The module if it is ready, else None at once: the first call starts a background
        build (a process), later calls load it when it has finished. With mode
        ``required`` this is :meth:`load`."""
        if self.decided:
            return self.module
        now = time.monotonic()
        if now < self._next_poll:
            return None
        with self._lock:
            if self.decided:
                return self.module
            self._next_poll = now + _POLL_EVERY_S
            mode = self._mode()
            proc = self._proc
            if mode != "auto" or is_cached(self.stem, self.source):
                ready = None
            elif proc is None:
                problem = compiler_problem()
                if problem is None:
                    self._proc = self._spawn()
                    self.how = f"building in the background (process {self._proc.pid})"
                    _log.warning(
                        "actreg: building %s for this machine in the background (once, under "
                        "a minute; the PyTorch path until then; log in %s)",
                        self.what,
                        self._log_path(),
                    )
                    return None
                ready = None
            elif proc.poll() is None:
                return None
            else:
                ready = proc.returncode
        if ready is None or ready == 0:
            return self.load()
        self._failed(mode, f"background build exited with {ready}; see {self._log_path()}")
        return None

    def _log_path(self) -> Path:
        name, folder, _ = _paths(self.stem, self.source)
        return folder.with_name(name + ".log")

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # this copy of actreg
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = "import sys; from actreg._cpp import build; build(*sys.argv[1:4])"
        with open(self._log_path(), "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-c", code, self.stem, self.source, self.what],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with a script's Ctrl-C: the cache completes
            )
