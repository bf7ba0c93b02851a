"""The ``actreg`` command line (actreg.lab.cli) through ``main(argv)``: each subcommand, its
errors and usage messages."""

from __future__ import annotations

import pytest

from actreg.lab.cli import main
from actreg.lab.experiments import load_results

COMMON = ["data=digits", "limit=200", "epochs=2", "batch_size=50", "progress=false"]
TINY = {
    "sparse-ae": ["code=32", "probe_size=200"],
    "sparse-rectifier": ["hidden=32,32,32"],
    "cnn": ["channels=4,8", "hidden=16"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs of three experiments made by ``actreg run`` (what ``speedup`` reads)."""
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, extra in TINY.items():
        sets = [*COMMON, *extra, f"out_dir={out}", "run_name=t"]
        assert main(["run", name, *[f"--set={s}" for s in sets]]) == 0
        done[name] = {"run_dir": str(out / name / "t")}
    return done


def test_cli_run_and_report(tmp_path, capsys):
    args = ["run", "sparse-rectifier", *[f"--set={s}" for s in COMMON]]
    args += ["--set=hidden=16", "--set=variants=relu-l1", f"--set=out_dir={tmp_path}"]
    args += ["--set=run_name=cli"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| relu-l1 |" in printed
    run_dir = tmp_path / "sparse-rectifier" / "cli"
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "cnn", "--set", "chanels=3"], "unknown key 'chanels'"),
        (["report", "/nonexistent/run"], "no results.json"),
        (["data", "fetch", "cifar"], "cifar"),
    ],
    ids=["experiment", "key", "report", "dataset"],
)
def test_cli_errors_are_clear(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["run"], ["data"], ["demo", "--epochs"]])
def test_cli_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["demo", "run", "data", "report"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: actreg" in capsys.readouterr().out


def test_cli_data_list(capsys, tmp_path):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "digits" in out


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| l1 0.01 |" in out and "| none |" in out and "| raw inputs |" in out
    (folder,) = (tmp_path / "sparse-ae").iterdir()
    assert str(folder) in out and (folder / "results.json").exists()
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 0
    assert len(list((tmp_path / "sparse-ae").iterdir())) == 2  # a second demo never overwrites


@pytest.mark.parametrize("flags", [[], ["--no-extension", "--no-fold"]], ids=["cpp", "torch"])
@pytest.mark.parametrize("name", ["sparse-rectifier", "sparse-ae"])
def test_speedup_converts_a_trained_run(runs, name, flags, capsys):
    assert main(["speedup", runs[name]["run_dir"], "--examples", "20", *flags]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" identical "].strip() == "True"
    folded = name == "sparse-rectifier" and not flags
    assert cells[" input_folded "].strip() == str(folded)
    assert "input zero fraction per converted layer" in out
    if folded:  # the first layer reads the raw pixels, most of them zero
        assert "fc1 0." in out


def test_speedup_refuses_other_runs(runs, capsys):
    assert main(["speedup", runs["cnn"]["run_dir"]]) == 2
    assert "sparse-rectifier, sparse-ae and transformer-lm" in capsys.readouterr().err
    assert main(["speedup", runs["sparse-ae"]["run_dir"], "--variant", "nope"]) == 2


def test_run_help_lists_every_setting_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "cnn", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "settings of cnn (--set KEY=VALUE):" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "float" in lines["coef"] and "0.0001" in lines["coef"]
    assert "its coefficient" in lines["coef"]
    assert "tuple[int, ...]" in lines["channels"] and "32,64" in lines["channels"]


def test_common_flags_set_the_config(tmp_path, capsys):
    args = ["run", "sparse-rectifier", *[f"--set={s}" for s in COMMON]]
    args += ["--set=hidden=8", "--set=variants=relu", "--out", str(tmp_path), "--seed", "3"]
    assert main([*args, "--threads", "1", "--no-progress"]) == 0
    (folder,) = (tmp_path / "sparse-rectifier").iterdir()
    config = load_results(folder)["config"]
    assert (config["seed"], config["threads"], config["progress"]) == (3, 1, False)


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (PermissionError(13, "Permission denied", "/ro/x"), 1, "Permission denied (/ro/x)"),
        (OSError(28, "No space left on device", "/full"), 1, "free some space"),
        (RuntimeError("boom"), 1, "unexpected RuntimeError: boom (rerun with --debug"),
    ],
    ids=["read-only", "disk-full", "bug"],
)
def test_failures_are_one_line_and_debug_shows_the_traceback(
    monkeypatch, capsys, error, code, says
):
    import actreg.lab.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_report", fail)  # build_parser binds it when main() runs
    assert main(["report", "somewhere"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert main(["--debug", "report", "somewhere"]) == code
    assert "Traceback" in capsys.readouterr().err
