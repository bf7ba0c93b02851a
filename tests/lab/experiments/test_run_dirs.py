"""Run folders: claimed atomically, never shared, never silently overwritten; results whole.

The full-disk and read-only cases mount a small tmpfs (they need root, as CI runs; skipped
elsewhere).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from actreg import ActregError
from actreg.lab.experiments._common import make_run_dir, save_results


@dataclass
class Cfg:
    out_dir: str
    run_name: str | None = None
    overwrite: bool = False


def _claim(out_dir: str, queue) -> None:
    queue.put(str(make_run_dir(Cfg(out_dir), "exp")))


def test_unnamed_runs_started_together_get_their_own_folders(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    folders = [queue.get(timeout=5) for _ in procs]
    assert len(set(folders)) == 6
    assert all(Path(f).is_dir() and Path(f).parent == tmp_path / "exp" for f in folders)


def test_a_named_folder_that_exists_is_refused(tmp_path):
    first = make_run_dir(Cfg(str(tmp_path), "a"), "exp")
    save_results(first, "exp", Cfg(str(tmp_path), "a"), {"value": 1})
    with pytest.raises(ActregError, match=r"exists: choose another run_name, or set overwrite"):
        make_run_dir(Cfg(str(tmp_path), "a"), "exp")
    assert json.loads((first / "results.json").read_text())["value"] == 1  # untouched


def test_overwrite_reuses_the_folder_and_drops_the_old_results_first(tmp_path):
    first = make_run_dir(Cfg(str(tmp_path), "a"), "exp")
    save_results(first, "exp", Cfg(str(tmp_path), "a"), {"value": 1})
    again = make_run_dir(Cfg(str(tmp_path), "a", overwrite=True), "exp")
    assert again == first
    assert not (again / "results.json").exists()  # a failed rerun cannot look finished


def test_out_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ActregError, match="not a folder; choose another out_dir"):
        make_run_dir(Cfg(str(tmp_path / "file")), "exp")


@pytest.fixture
def tmpfs(tmp_path):
    """A mounted 64 KiB tmpfs: yields (its path, a function that remounts it read-only)."""
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("mounting a tmpfs needs root")

    def read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)

    yield point, read_only
    subprocess.run(["umount", str(point)], check=False)


def test_full_disk_keeps_the_earlier_results_and_names_the_path(tmpfs):
    tmpfs, _ = tmpfs
    run_dir = make_run_dir(Cfg(str(tmpfs), "a"), "exp")
    save_results(run_dir, "exp", Cfg(str(tmpfs), "a"), {"value": 1})
    with pytest.raises(ActregError, match=r"could not write .*results.json.*free space"):
        save_results(run_dir, "exp", Cfg(str(tmpfs), "a"), {"value": "x" * 200_000})
    assert json.loads((run_dir / "results.json").read_text())["value"] == 1
    assert [p.name for p in run_dir.iterdir()] == ["results.json"]  # no temporary left


def test_read_only_out_dir_is_a_clear_error(tmpfs):
    tmpfs, read_only = tmpfs
    read_only()
    with pytest.raises(ActregError, match="choose a writable out_dir"):
        make_run_dir(Cfg(str(tmpfs)), "exp")
