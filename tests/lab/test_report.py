"""Reports: tables, runs side by side with their settings, commands and pictures, search
folders embedded, results files read with clear errors (moved from tests/lab/experiments,
plus a toy experiment to show the report needs only a registry entry)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from actreg import ActregError
from actreg.lab.experiments import EXPERIMENTS, Experiment, load_results
from actreg.lab.report import format_table, write_report


def test_report_puts_runs_side_by_side(runs, tmp_path):
    out = write_report([r["run_dir"] for r in runs.values()], tmp_path / "report.md")
    text = out.read_text()
    for name in runs:
        assert f"## {name}" in text
        assert f"actreg run {name} --set data=digits" in text
    assert "![reconstructions](" in text


def test_report_can_copy_images(runs, tmp_path):
    out = write_report([runs["sparse-ae"]["run_dir"]], tmp_path / "r.md", copy_images=True)
    assert "![reconstructions](img/sparse-ae-t-reconstructions.png)" in out.read_text()
    assert (tmp_path / "img" / "sparse-ae-t-reconstructions.png").exists()


def test_report_of_a_moved_run_folder_finds_its_pictures(runs, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "t"
    shutil.copytree(runs["sparse-ae"]["run_dir"], moved)
    monkeypatch.chdir(tmp_path)  # another working directory than the run's
    out = write_report([moved], tmp_path / "docs" / "r.md", copy_images=True)
    assert "![reconstructions](img/sparse-ae-t-reconstructions.png)" in out.read_text()
    plain = write_report([moved], tmp_path / "plain.md")
    assert "![reconstructions](elsewhere/t/reconstructions.png)" in plain.read_text()


def test_report_names_a_missing_picture(runs, tmp_path):
    moved = tmp_path / "t"
    shutil.copytree(runs["sparse-ae"]["run_dir"], moved)
    (moved / "reconstructions.png").unlink()
    with pytest.raises(ActregError, match="picture 'reconstructions.png' .* is missing"):
        write_report([moved], tmp_path / "r.md")


def test_report_embeds_a_search_folder(runs, tmp_path):
    search = tmp_path / "search" / "study"
    search.mkdir(parents=True)
    (search / "search.md").write_text(
        "# Coefficient search: cnn\n\n| coef |\n\n![trade-off](tradeoff.png)\n"
    )
    out = write_report([search, runs["cnn"]["run_dir"]], tmp_path / "docs" / "r.md")
    text = out.read_text()
    assert "## Coefficient search: cnn" in text
    assert "![trade-off](../search/study/tradeoff.png)" in text
    assert "## cnn:" in text


@dataclasses.dataclass
class ToyConfig:
    size: int = 3
    widths: tuple[int, ...] = (4, 8)
    progress: bool = True


TOY = Experiment(
    "toy",
    ToyConfig,
    lambda cfg: {},
    lambda doc: [{"variant": "only", "error": doc["error"]}],
    "a stand-in known to the report only through its registry entry",
)


def _toy_run(folder, config):
    folder.mkdir(parents=True)
    doc = {"experiment": "toy", "version": "9.9", "config": config, "error": 0.125}
    (folder / "results.json").write_text(json.dumps(doc))
    return folder


def test_report_of_a_registered_toy(monkeypatch, tmp_path):
    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    run = _toy_run(tmp_path / "run", {"size": 5, "widths": [4, 8], "progress": False})
    text = write_report([run], tmp_path / "r.md").read_text()
    assert f"## toy: `{run}`" in text
    assert "    actreg run toy --set size=5\n" in text  # defaults and progress left out
    assert "| only | 0.1250 |" in text and "actreg 9.9, torch ?" in text


def test_report_reproduces_changed_tuples(monkeypatch, tmp_path):
    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    run = _toy_run(tmp_path / "run", {"size": 3, "widths": [2, 2, 2]})
    assert "actreg run toy --set widths=2,2,2" in write_report([run], tmp_path / "r.md").read_text()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no results.json"),
        ("{not json", "not valid JSON"),
        ('{"config": {}}', "no 'experiment' key"),
        ('{"experiment": "nope", "config": {}}', "unknown experiment 'nope'"),
    ],
    ids=["missing", "garbage", "not-actreg", "unknown-experiment"],
)
def test_report_refuses_bad_results(tmp_path, content, match):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "results.json").write_text(content)
    with pytest.raises(ActregError, match=match):
        write_report([run], tmp_path / "r.md")


def test_report_needs_a_run():
    with pytest.raises(ActregError, match="at least one run folder"):
        write_report([], "r.md")


def test_load_results_keeps_its_path(monkeypatch, tmp_path):
    run = _toy_run(tmp_path / "run", {})
    assert load_results(run)["_path"] == str(run / "results.json")
    assert load_results(run / "results.json")["error"] == 0.125


@pytest.mark.parametrize(
    ("rows", "table"),
    [
        ([], ""),
        (
            [{"a": 1, "b": 0.5}, {"b": 1e-5, "c": None}],
            "| a | b | c |\n|---|---|---|\n| 1 | 0.5000 | – |\n| – | 1.00e-05 | – |",
        ),
    ],
    ids=["empty", "union-of-keys"],
)
def test_format_table(rows, table):
    assert format_table(rows) == table
