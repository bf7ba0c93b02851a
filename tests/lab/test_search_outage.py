"""Storage outages: a real PostgreSQL server stopped for 15 s while trials run and finish,
and the retries' backoff, deadline and messages without a server (the fault suite's other
half, with its helpers: ``test_faults.py``).

The outage test needs ``ACTREG_TEST_POSTGRES`` and ``ACTREG_TEST_POSTGRES_DATA`` (the
server's data folder, whose owner may run ``pg_ctl``), both set by ``.ci/run``;
``ACTREG_FAULT_OUTAGES=N`` repeats it (default 1).
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from actreg import ActregError
from actreg.lab.search._retry import Outage

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import _complete, _count, _finished_runs, _search, _spec

POSTGRES = os.environ.get("ACTREG_TEST_POSTGRES")
PG_DATA = os.environ.get("ACTREG_TEST_POSTGRES_DATA")
OUTAGES = int(os.environ.get("ACTREG_FAULT_OUTAGES", "1"))


def _pg_ctl(*args: str) -> None:
    data = Path(str(PG_DATA))
    opts = shlex.split((data / "postmaster.opts").read_text())
    owner = data.stat().st_uid
    prefix = [] if owner == os.getuid() else ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--"]
    command = [*prefix, str(Path(opts[0]).with_name("pg_ctl")), "-D", str(data), *args]
    if args[0] == "start":  # the options it ran with, but the data folder
        rest = [o for i, o in enumerate(opts[1:]) if "-D" not in (o, opts[i])]
        command += ["-w", "-l", str(data / "outage_test.log"), "-o", shlex.join(rest)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(
    not (POSTGRES and PG_DATA),
    reason="needs a PostgreSQL server this test may stop: ACTREG_TEST_POSTGRES and "
    "ACTREG_TEST_POSTGRES_DATA (set by .ci/run)",
)
@pytest.mark.parametrize("outage", range(OUTAGES), ids=lambda o: f"outage{o}")
def test_postgres_outage_mid_trial(tmp_path, outage):
    """The server stops for 15 s while two trials run and finish: both results land once,
    neither trial is failed as stale, each worker logs the outage once."""
    if os.getuid() != Path(str(PG_DATA)).stat().st_uid and os.getuid() != 0:
        pytest.skip("the PostgreSQL data folder belongs to another user and we are not root")
    spec = _spec(
        tmp_path,
        coefs=[1e-2, 1e-3],
        refine=0,
        storage=POSTGRES,
        overrides=["sleep=4", f"log={tmp_path / 'runs.log'}"],
    )
    proc = _search(tmp_path, spec)
    deadline = time.time() + 120
    while _count(tmp_path / "runs.log.start") < 2:
        assert time.time() < deadline and proc.poll() is None, "the trials did not start"
        time.sleep(0.05)
    time.sleep(0.5)
    _pg_ctl("stop", "-m", "fast", "-w")
    try:
        time.sleep(15)
    finally:
        _pg_ctl("start")
    err = (tmp_path / "search.err").read_text
    assert proc.wait(timeout=120) == 0, err()
    assert sorted(_finished_runs(tmp_path).items()) == [(1e-3, 1), (1e-2, 1)]
    done = _complete(spec)
    assert sorted(done) == [1e-3, 1e-2] and all(len(v) == 1 for v in done.values())
    text = err()
    assert text.count("unreachable") == 2 and text.count("is back after") == 2, text
    assert "exceeding max length" not in text  # the driver's reason, not Optuna's wrapper
    assert "actreg:actreg@" not in text and "Traceback" not in text
    import optuna

    trials = optuna.load_study(study_name=spec["study"], storage=POSTGRES).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]  # none failed as stale


def test_outage_past_the_deadline_is_one_clear_error(caplog):
    import sqlalchemy.exc

    calls = []

    def down() -> None:
        calls.append(time.monotonic())
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    outage = Outage("postgresql://u:***@db:5432/runs", patience=1.2, scrub=str)
    with caplog.at_level("WARNING", logger="actreg.lab.search"):
        with pytest.raises(ActregError) as err:
            outage.call("storing the result of trial 3", down, reset=lambda: None)
    message = str(err.value)
    assert message.startswith("storage postgresql://u:***@db:5432/runs unreachable for 1 s")
    assert "while storing the result of trial 3: connection refused" in message
    assert "run the same command again: it resumes" in message
    assert len(calls) == 3  # after 0.5 s, then 0.7 s (what was left of the 1.2 s)
    assert caplog.text.count("unreachable") == 1  # logged once per outage


def test_outage_retries_until_back_and_other_errors_pass(caplog):
    import sqlalchemy.exc

    outcomes: list[Exception | None] = [
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed")),
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        None,
    ]
    resets = []

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "ok"

    outage = Outage("postgresql://u:***@db/runs", patience=30, scrub=str)
    with caplog.at_level("WARNING", logger="actreg.lab.search"):
        assert outage.call("claiming a trial", flaky, reset=lambda: resets.append(1)) == "ok"
    assert len(resets) == 2 and outage.outages == 1 and outage.recently_back(5)
    assert caplog.text.count("unreachable") == 1 and caplog.text.count("is back") == 1
    with pytest.raises(KeyError):  # not an outage: raised at once
        outage.call("reading", lambda: {}["x"], reset=lambda: None)
