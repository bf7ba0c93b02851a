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
from actreg.lab.experiments._rundir import make_run_dir, save_results


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
    wanted = r"exists: choose another run_name, set overwrite=true .* or resume=true"
    with pytest.raises(ActregError, match=wanted):
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
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json", "run_config.json"]


def test_read_only_out_dir_is_a_clear_error(tmpfs):
    tmpfs, read_only = tmpfs
    read_only()
    with pytest.raises(ActregError, match="choose a writable out_dir"):
        make_run_dir(Cfg(str(tmpfs)), "exp")


@dataclass
class ResumeCfg(Cfg):
    resume: bool = False
    coef: float = 1e-3
    threads: int = 0


def test_resume_takes_back_an_interrupted_folder_with_the_same_settings(tmp_path):
    path = make_run_dir(ResumeCfg(str(tmp_path), "r"), "exp")
    assert json.loads((path / "run_config.json").read_text())["coef"] == 1e-3
    again = make_run_dir(ResumeCfg(str(tmp_path), "r", resume=True, threads=2), "exp")
    assert again == path  # threads may change: results stay the same


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"coef": 1e-2}, r"other settings \(coef: 0.001 -> 0.01\)"),
        ({"finished": True}, "finished .*nothing to resume"),
        ({"no_config": True}, "run_config.json is missing"),
    ],
    ids=["other-settings", "finished", "no-run-config"],
)
def test_resume_refuses_what_it_cannot_continue(tmp_path, change, match):
    path = make_run_dir(ResumeCfg(str(tmp_path), "r"), "exp")
    if change.pop("finished", False):
        save_results(path, "exp", ResumeCfg(str(tmp_path), "r"), {})
    if change.pop("no_config", False):
        (path / "run_config.json").unlink()
    with pytest.raises(ActregError, match=match):
        make_run_dir(ResumeCfg(str(tmp_path), "r", resume=True, **change), "exp")


def test_a_killed_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path):
    # kill -9 of `actreg run` once the first variant has a checkpoint, then the same command
    # with resume=true: the results equal those of a run that was never interrupted
    import os
    import signal
    import sys
    import time

    sets = [
        "data=digits", "hidden=32,32", "epochs=12", "batch_size=32", "variants=relu-l1,relu",
        "threads=1", "progress=false", f"out_dir={tmp_path}",
    ]  # fmt: skip

    def command(name: str, *extra: str) -> list[str]:
        args = [f"--set={s}" for s in [*sets, f"run_name={name}", *extra]]
        return [sys.executable, "-m", "actreg.lab.cli", "run", "sparse-rectifier", *args]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command("whole"), check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(command("killed"), env=env, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "sparse-rectifier" / "killed" / "relu-l1" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt.parent.parent / "results.json").exists()
    refused = subprocess.run(command("killed"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "resume=true" in refused.stderr
    subprocess.run(
        command("killed", "resume=true"), check=True, env=env, capture_output=True, timeout=600
    )
    whole, resumed = (
        json.loads((tmp_path / "sparse-rectifier" / n / "results.json").read_text())
        for n in ("whole", "killed")
    )
    for variant in ("relu-l1", "relu"):
        a, b = whole["variants"][variant], resumed["variants"][variant]
        assert a["test_error"] == b["test_error"]
        assert [r["val_error"] for r in a["history"]] == [r["val_error"] for r in b["history"]]
