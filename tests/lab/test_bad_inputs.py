"""The command line's bad inputs: each gets exactly one ``actreg: error:`` line that names
the problem and the fix, exit 2 for bad input (1 for a failure of the system), and no
traceback (the CLI's half of the list of issue 16; the library's half is
tests/test_bad_inputs.py).

Each case is ``(id, argv, exit code, words)``, run in-process through
:func:`actreg.lab.cli.main`. Every word must be in the error line (case-insensitive); a word
starting with ``!`` must not be (wrong advice: an empty corpus is not cured by a smaller
batch). ``{tmp}`` in argv is a folder of prepared bad files (see :func:`place`), ``{ro}`` a
read-only file system. Vision runs get digits, 100 examples and one epoch first, so a check
that does not fire trains for seconds, not on MNIST for minutes. The kind of each case is
the first part of its id, counted in docs/guides/errors.md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from actreg.lab.cli import main

VISION = ("sparse-ae", "sparse-rectifier", "cnn", "ablation")
SEQUENCE = ("lstm-lm", "seq2seq")
SAFE_VISION = ["data=digits", "limit=100", "epochs=1", "progress=false"]
SAFE_SEQUENCE = ["data={tmp}/corpus", "epochs=1", "progress=false"]


# (id, argv, exit code, words of the error line separated by " | "; "!word": must not appear)
CASES: list[tuple[str, str, int, str]] = [
    # the command line itself (argparse)
    ("argv-no-command", "", 2, "required"),
    ("argv-unknown-command", "trian", 2, "invalid choice | trian"),
    ("argv-run-no-experiment", "run", 2, "name an experiment"),
    ("argv-unknown-flag", "run cnn --epochs 3", 2, "--epochs | unrecognized"),
    ("argv-threads-not-int", "run cnn --threads two", 2, "--threads | 'two'"),
    ("argv-seed-float", "run cnn --seed 1.5", 2, "--seed | '1.5'"),
    ("argv-demo-epochs-word", "demo --epochs x", 2, "--epochs | 'x'"),
    ("argv-demo-unknown-flag", "demo --threads 2", 2, "--threads"),
    ("argv-data-no-subcommand", "data", 2, "required"),
    ("argv-report-no-run", "report", 2, "RUN_DIR"),
    ("argv-speedup-examples-float", "speedup x --examples 1e2", 2, "--examples"),
    ("argv-search-workers-word", "search cnn --workers two", 2, "--workers"),
    # --set syntax and unknown names (close matches suggested)
    ("syntax-set-no-equals", "run cnn --set epochs", 2, "key=value | epochs=5"),
    ("syntax-set-no-key", "run cnn --set =5", 2, "no key | epochs=5"),
    ("unknown-experiment", "run nope", 2, "unknown experiment | sparse-ae"),
    ("unknown-experiment-typo", "run sparse_ae", 2, "did you mean sparse-ae"),
    ("unknown-key-typo", "run cnn --set=epoch=5", 2, "'epoch' | did you mean epochs"),
    ("unknown-key-other-experiment", "run cnn --set=code=5", 2, "'code' | valid keys"),
    ("unknown-penalty", "run sparse-ae --set=penalty=l11", 2, "l11 | did you mean"),
    ("unknown-activation", "run sparse-ae --set=act=relux", 2, "relux | did you mean relu"),
    ("unknown-where", "run sparse-ae --set=where=everywhere", 2, "everywhere | code"),
    ("unknown-scaling", "run cnn --set=scaling=zscore", 2, "zscore | standard"),
    ("unknown-optimizer", "run cnn --set=optimizer=adamm", 2, "adamm | did you mean adam"),
    ("unknown-probe-scaling", "run sparse-ae --set=probe_scaling=x", 2, "probe_scaling | global"),
    ("unknown-variant", "run sparse-rectifier --set=variants=relu,sigmoid", 2, "sigmoid | relu-l1"),
    ("unknown-question", "run ablation --set=question=wich-norm", 2, "did you mean which-norm"),
    ("unknown-ablation-activation", "run ablation --set=activations=relu,foo", 2, "foo"),
    ("unknown-seq-optimizer", "run lstm-lm --set=optimizer=adamw", 2, "adamw | adam"),
    ("unknown-objective", "search cnn --objective speed", 2, "speed | val_error"),
    ("unknown-search-experiment", "search lstm-lm", 2, "lstm-lm"),
    ("unknown-data-set", "data fetch mnst", 2, "mnst | did you mean 'mnist'"),
    ("unknown-data-nothing-to-fetch", "data fetch digits", 2, "nothing to fetch"),
    # wrong types
    ("type-epochs-word", "run cnn --set=epochs=abc", 2, "epochs | whole number"),
    ("type-lr-word", "run cnn --set=lr=fast", 2, "lr | number | 'fast'"),
    ("type-coef-word", "run cnn --set=coef=big", 2, "coef | number"),
    ("type-bool-word", "run cnn --set=compare=maybe", 2, "compare | true or false"),
    ("type-bool-number", "run cnn --set=overwrite=2", 2, "overwrite | true or false"),
    ("type-width-word", "run sparse-ae --set=hidden=abc", 2, "hidden | whole number"),
    ("type-seed-word", "run cnn --set=seed=abc", 2, "seed | whole number"),
    ("type-limit-word", "run cnn --set=limit=all", 2, "limit | whole number"),
    ("type-int-none", "run cnn --set=epochs=none", 2, "epochs | whole number"),
    ("type-tie-weights-word", "run lstm-lm --set=tie_weights=x", 2, "tie_weights"),
    # floats where a whole number is wanted: refused, never cut
    ("float-epochs-2.9e0", "run cnn --set=epochs=2.9e0", 2, "epochs | whole number | 2.9"),
    ("float-epochs-2.5", "run cnn --set=epochs=2.5", 2, "epochs | whole number"),
    ("float-batch-size-1e-1", "run cnn --set=batch_size=1e-1", 2, "batch_size | 0.1 | !got 0"),
    ("float-code-1.5", "run sparse-ae --set=code=1.5", 2, "code | whole number"),
    ("float-epochs-inf", "run cnn --set=epochs=inf", 2, "epochs | whole number"),
    ("float-width-item", "run sparse-ae --set=hidden=64.5", 2, "hidden | whole number"),
    ("float-seq-bptt", "run lstm-lm --set=bptt=3.5", 2, "bptt | whole number"),
    # numbers out of range
    ("range-epochs-zero", "run cnn --set=epochs=0", 2, "epochs | >= 1"),
    ("range-batch-size-zero", "run cnn --set=batch_size=0", 2, "batch_size | >= 1"),
    ("range-batch-size-negative", "run cnn --set=batch_size=-5", 2, "batch_size | >= 1"),
    ("range-lr-negative", "run cnn --set=lr=-1", 2, "lr"),
    ("range-lr-zero", "run cnn --set=lr=0", 2, "lr | positive"),
    ("range-lr-nan", "run cnn --set=lr=nan", 2, "lr | finite"),
    ("range-coef-negative", "run cnn --set=coef=-1", 2, "coef | not be negative"),
    ("range-weight-decay-negative", "run cnn --set=weight_decay=-1", 2, "weight_decay"),
    ("range-warmup-negative", "run cnn --set=warmup_steps=-1", 2, "warmup_steps | not be negative"),
    ("range-patience-negative", "run cnn --set=patience=-1", 2, "patience | not be negative"),
    ("range-seed-negative", "run cnn --set=seed=-1", 2, "seed | not be negative"),
    ("range-seed-flag-negative", "run cnn --seed -1", 2, "seed | not be negative"),
    ("range-threads-negative", "run cnn --set=threads=-1", 2, "threads | not be negative"),
    ("range-threads-flag-negative", "run cnn --threads -2", 2, "threads | not be negative"),
    ("range-seq-threads-negative", "run lstm-lm --set=threads=-1", 2, "threads | not be negative"),
    ("range-limit-small", "run cnn --set=limit=5", 2, "limit | >= 10"),
    ("range-limit-negative", "run cnn --set=limit=-1", 2, "limit | >= 10"),
    ("range-val-size-zero", "run cnn --set=val_size=0", 2, "val_size | fraction"),
    ("range-val-size-fractional-count", "run cnn --set=val_size=2.5", 2, "val_size | whole count"),
    ("range-target-sparsity-high", "run cnn --set=target_sparsity=1.5", 2, "between 0 and 1"),
    ("range-target-sparsity-zero", "run cnn --set=target_sparsity=0", 2, "strictly between"),
    ("range-target-l0-zero", "run cnn --set=target_l0=0", 2, "target_l0 | > 0"),
    ("range-two-targets", "run cnn --set=target_sparsity=0.9 --set=target_l0=4", 2, "not both"),
    ("range-noise-negative", "run sparse-ae --set=noise=-1", 2, "noise | not be negative"),
    ("range-probe-size-negative", "run sparse-ae --set=probe_size=-5", 2, "probe_size"),
    (
        "range-resample-dead-high",
        "run sparse-ae --set=resample_dead=2",
        2,
        "resample_dead | [0, 1]",
    ),
    ("range-kl-target-high", "run sparse-ae --set=penalty=kl --set=kl_target=2", 2, "target"),
    ("range-topk-above-code", "run sparse-ae --set=code=16 --set=topk=32", 2, "topk | topk <= 16"),
    ("range-dropout-one", "run sparse-rectifier --set=dropout=1", 2, "dropout | [0, 1)"),
    ("range-dropout-high", "run sparse-rectifier --set=dropout=1.5", 2, "dropout"),
    ("range-lstm-layers", "run lstm-lm --set=layers=5", 2, "layers | 1, 2 or 3"),
    ("range-lstm-bptt", "run lstm-lm --set=bptt=1", 2, "bptt | >= 2"),
    ("range-lstm-dropout", "run lstm-lm --set=dropout_h=1", 2, "dropout_h | [0, 1)"),
    ("range-lstm-vocab", "run lstm-lm --set=vocab_size=2", 2, "vocab_size | >= 3"),
    ("range-lstm-alpha", "run lstm-lm --set=alpha=-1", 2, "alpha | not be negative"),
    ("range-lstm-lr-decay", "run lstm-lm --set=lr_decay=0.5", 2, "lr_decay | >= 1"),
    ("range-lstm-limit-tokens", "run lstm-lm --set=limit_tokens=5", 2, "limit_tokens"),
    ("range-lstm-clip", "run lstm-lm --set=clip=-1", 2, "clip | not be negative"),
    ("range-seq2seq-max-len", "run seq2seq --set=max_len=1", 2, "max_len | >= 2"),
    ("range-seq2seq-limit-sentences", "run seq2seq --set=limit_sentences=0", 2, "limit_sentences"),
    ("range-seq2seq-epochs", "run seq2seq --set=epochs=0", 2, "epochs | >= 1"),
    ("range-ablation-seeds", "run ablation --set=seeds=1", 2, "seeds | >= 2"),
    ("range-ablation-grid", "run ablation --set=grid=0", 2, "grid | positive"),
    ("range-demo-epochs", "demo --epochs 0", 2, "epochs | >= 1"),
    ("range-demo-epochs-negative", "demo --epochs -3", 2, "epochs | >= 1"),
    ("range-search-code-zero", "search sparse-ae --set=code=0 --out {tmp}", 2, "code | >= 1"),
    ("float-search-epochs", "search cnn --set=epochs=2.5 --out {tmp}", 2, "epochs | whole number"),
    ("type-search-coef-word", "search cnn --coef abc --out {tmp}", 2, "'abc' | --coef 1e-2"),
    ("range-search-coef-negative", "search cnn --coef -1 --out {tmp}", 2, "positive | '-1'"),
    ("range-search-workers", "search cnn --workers 0", 2, "workers"),
    ("range-search-refine-word", "search cnn --refine x", 2, "--refine"),
    ("range-speedup-examples", "speedup {tmp}/cnn-run --examples 0", 2, "examples | >= 1"),
    ("range-speedup-threads", "speedup {tmp}/cnn-run --threads 0", 2, "threads | >= 1"),
    # widths: zero, negative, empty, wrong count
    ("width-code-zero", "run sparse-ae --set=code=0", 2, "code | >= 1"),
    ("width-code-negative", "run sparse-ae --set=code=-5", 2, "code | >= 1"),
    ("width-hidden-negative", "run sparse-ae --set=hidden=10,-3", 2, "hidden | >= 1"),
    ("width-hidden-zero", "run sparse-rectifier --set=hidden=100,0", 2, "hidden | >= 1"),
    ("width-hidden-empty", "run sparse-rectifier --set=hidden=", 2, "hidden | at least one"),
    ("width-cnn-one-channel", "run cnn --set=channels=32", 2, "channels | two conv blocks"),
    ("width-cnn-three-channels", "run cnn --set=channels=8,8,8", 2, "channels | 32,64"),
    ("width-cnn-channel-zero", "run cnn --set=channels=32,0", 2, "channels | >= 1"),
    ("width-cnn-head-zero", "run cnn --set=hidden=0", 2, "hidden | >= 1"),
    ("width-lstm-emb-zero", "run lstm-lm --set=emb_size=0", 2, "emb_size | >= 1"),
    ("width-seq2seq-code-zero", "run seq2seq --set=code=0", 2, "code | >= 1"),
    ("width-ablation-widths", "run ablation --set=widths=64,0", 2, "widths | >= 1"),
    ("width-demo-code", "run sparse-ae --set=code=-1", 2, "code"),
    # strings that may not be empty
    ("empty-data", "run cnn --set=data=", 2, "data | empty"),
    ("empty-out-dir", "run cnn --set=out_dir=", 2, "out_dir | empty"),
    ("empty-variants", "run sparse-rectifier --set=variants=", 2, "variants | relu-l1"),
    ("empty-penalty", "run sparse-ae --set=penalty=", 2, "penalty | empty"),
    # data that is missing, unreadable, binary or empty
    ("data-missing-vision", "run cnn --set=data=nowhere", 2, "nowhere | digits"),
    (
        "data-missing-corpus",
        "run lstm-lm --set=data=/no/corpus",
        2,
        "/no/corpus | data fetch austen",
    ),
    ("data-corpus-is-a-file", "run lstm-lm --set=data={tmp}/afile", 2, "afile | train.txt"),
    ("data-corpus-no-test", "run lstm-lm --set=data={tmp}/notest", 2, "test.txt"),
    ("data-corpus-binary", "run lstm-lm --set=data={tmp}/binary", 2, "train.txt | utf-8 | !batch"),
    ("data-corpus-empty", "run lstm-lm --set=data={tmp}/empty", 2, "train.txt | no words | !batch"),
    ("data-corpus-empty-seq2seq", "run seq2seq --set=data={tmp}/empty", 2, "no words | !batch"),
    ("data-corpus-too-small", "run lstm-lm --set=batch_size=500", 2, "too few | lower batch_size"),
    ("data-idx-garbage", "run cnn --set=data={tmp}/idx", 2, "idx"),
    # paths: a file where a folder goes, read-only, missing
    ("path-out-is-a-file", "run cnn --out {tmp}/afile", 2, "afile | not a folder | out_dir"),
    ("path-out-under-a-file", "run cnn --out {tmp}/afile/runs", 2, "afile | not a folder"),
    ("path-out-read-only", "run cnn --out {ro}/runs", 2, "read-only | writable out_dir"),
    ("path-seq-out-is-a-file", "run lstm-lm --set=out_dir={tmp}/afile", 2, "not a folder"),
    ("path-demo-out-is-a-file", "demo --out {tmp}/afile", 2, "not a folder | out_dir"),
    ("path-run-name-taken", "run cnn --out {tmp} --set=run_name=taken", 2, "overwrite=true"),
    ("path-fetch-under-a-file", "data fetch austen --data-dir {tmp}/afile/d", 2, "--data-dir DIR"),
    ("path-fetch-read-only", "data fetch mnist --data-dir {ro}/data", 2, "read-only | --data-dir"),
    ("path-report-missing", "report /nonexistent/run", 2, "no results.json | actreg run"),
    ("path-report-bad-json", "report {tmp}/badjson", 2, "not valid JSON"),
    ("path-report-not-results", "report {tmp}/notresults", 2, "not an actreg results file"),
    ("path-report-truncated", "report {tmp}/cnn-run", 2, "'config' | rerun"),
    ("path-report-partial", "report {tmp}/partial", 2, "lacks | variants"),
    ("path-report-out-read-only", "report {run} --out {ro}/r.md", 1, "read-only | writ"),
    ("path-report-out-is-a-folder", "report {run} --out {tmp}", 1, "is a directory"),
    ("data-idx-garbage-files", "run cnn --set=data={tmp}/idxbad", 2, "idxbad | idx"),
    ("path-speedup-missing", "speedup /nonexistent/run", 2, "no results.json"),
    ("path-speedup-wrong-experiment", "speedup {tmp}/cnn-run", 2, "sparse-rectifier | 'cnn'"),
]


def _write_corpus(folder: Path, text: str | bytes, skip: str = "") -> None:
    folder.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        if name == skip:
            continue
        path = folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder of bad (and a few good) inputs that the cases name as ``{tmp}/...``."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "afile").write_text("not a folder\n")
    _write_corpus(tmp / "corpus", "the cat sat on the mat\nthe dog ran\n" * 20)
    _write_corpus(tmp / "notest", "a b c\n", skip="test.txt")
    _write_corpus(tmp / "binary", bytes(range(256)) * 4)
    _write_corpus(tmp / "empty", "\n\n")
    (tmp / "idx").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp / "idx" / name).write_bytes(b"\x00\x01garbage")
    (tmp / "badjson").mkdir()
    (tmp / "badjson" / "results.json").write_text("{not json")
    (tmp / "notresults").mkdir()
    (tmp / "notresults" / "results.json").write_text("{}")
    (tmp / "cnn-run").mkdir()
    (tmp / "cnn-run" / "results.json").write_text(json.dumps({"experiment": "cnn"}))
    (tmp / "idxbad").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (tmp / "idxbad" / name).write_bytes(b"\x00\x01garbage")
    (tmp / "partial").mkdir()
    partial = {"experiment": "cnn", "config": {}, "version": "0"}
    (tmp / "partial" / "results.json").write_text(json.dumps(partial))
    (tmp / "cnn" / "taken").mkdir(parents=True)
    return tmp


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A read-only file system (a tmpfs remounted ro; needs root, else the case skips)."""
    point = tmp_path_factory.mktemp("ro")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(point)],
                       check=True, capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    yield point
    subprocess.run(["umount", str(point)], check=False)


def _argv(line: str, request: pytest.FixtureRequest) -> list[str]:
    tmp = request.getfixturevalue("place")
    argv = [a.replace("{tmp}", str(tmp)) for a in line.split()]
    if "{run}" in argv:  # a real tiny cnn run (the lab's shared session fixture)
        run = request.getfixturevalue("runs")["cnn"]["run_dir"]
        argv = [run if a == "{run}" else a for a in argv]
    if any("{ro}" in a for a in argv):
        ro = request.getfixturevalue("read_only")
        if ro is None:
            pytest.skip("a read-only mount needs root")
        argv = [a.replace("{ro}", str(ro)) for a in argv]
    if argv[:1] == ["run"] and len(argv) > 1:
        safe = {n: SAFE_VISION for n in VISION} | {n: SAFE_SEQUENCE for n in SEQUENCE}
        first = [f"--set={p.replace('{tmp}', str(tmp))}" for p in safe.get(argv[1], [])]
        out = [] if "--out" in argv or any("out_dir=" in a for a in argv) else ["--out", str(tmp)]
        argv = [*argv[:2], *first, *out, *argv[2:]]  # the case's own settings come last: they win
    return argv


@pytest.mark.parametrize(
    ("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_one_clear_error_line(argv, code, words, request, capsys, monkeypatch):
    monkeypatch.setenv("ACTREG_DATA", str(request.getfixturevalue("place") / "data"))
    try:
        got = main(_argv(argv, request))
    except SystemExit as stop:  # argparse's usage errors
        got = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("actreg: error:")]
    assert got == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0].lower()
    words = words.lower().split(" | ")
    missing = [w for w in words if not w.startswith("!") and w not in line]
    wrong = [w[1:] for w in words if w.startswith("!") and w[1:] in line]
    assert not missing and not wrong, f"missing {missing}, should not say {wrong}: {lines[0]}"


CONFIG_KINDS = ("syntax", "unknown", "type", "float", "range", "width", "empty")
CONFIG_CASES = [c for c in CASES if c[1].startswith("run ") and c[0].split("-")[0] in CONFIG_KINDS]


@pytest.mark.parametrize(
    ("argv", "words"), [(c[1], c[3]) for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_settings_are_refused_before_any_data_loads(argv, words, request, capsys, monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("data loaded before the settings were checked")

    monkeypatch.setattr("actreg.lab.experiments._common.load_vision", load)
    monkeypatch.setattr("actreg.lab.experiments._seq.load_corpus", load)
    assert main(_argv(argv, request)) == 2
    err = capsys.readouterr().err
    assert "data loaded" not in err and words.split(" | ")[0].lower() in err.lower()


def test_debug_shows_the_traceback(request, capsys):
    argv = _argv("run lstm-lm --set=data={tmp}/binary", request)
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.count("actreg: error:") == 1


def test_the_list_has_more_than_a_hundred_command_line_inputs():
    assert len({c[0] for c in CASES}) == len(CASES) > 100
