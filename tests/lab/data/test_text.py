"""Tests of word-level corpora and language-model batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actreg import ActregError
from actreg.lab.data.text import EOS, UNK, batchify, bptt_batches, load_corpus, sentences


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "train.txt").write_text("a b b c\n\nc <unk> d a\nb\n")
    (folder / "valid.txt").write_text("a z\n")
    (folder / "test.txt").write_text("q q b\n")
    return folder


def test_vocab_and_ids(corpus_dir: Path) -> None:
    c = load_corpus(corpus_dir, vocab_size=5)
    # counts: b 3, a 2, c 2, d 1 -> ties alphabetical, <unk>/<eos> first
    assert c.vocab == [UNK, EOS, "b", "a", "c"]
    assert c.stoi == {w: i for i, w in enumerate(c.vocab)}
    assert c.train.tolist() == [3, 2, 2, 4, 1, 1, 4, 0, 0, 3, 1, 2, 1]
    assert c.valid.tolist() == [3, 0, 1] and c.test.tolist() == [0, 0, 2, 1]
    assert c.train.dtype == torch.long
    info = c.info
    json.dumps(info)
    assert info["tokens"] == {"train": 13, "valid": 3, "test": 4}
    assert info["oov_rate"] == {"train": round(2 / 13, 4), "valid": 0.3333, "test": 0.5}
    assert info["vocab_size"] == 5 and set(info["files_sha256"]) == {
        "train.txt",
        "valid.txt",
        "test.txt",
    }
    assert c.decode(c.encode("a zz b")) == "a <unk> b"


def test_large_vocab_keeps_all(corpus_dir: Path) -> None:
    c = load_corpus(corpus_dir, vocab_size=100)
    assert c.vocab == [UNK, EOS, "b", "a", "c", "d"]


def test_by_name_in_data_dir(corpus_dir: Path) -> None:
    c = load_corpus("tiny", data_dir=corpus_dir.parent)
    assert len(c.train) == 13


def test_missing_folder_and_file(tmp_path: Path, corpus_dir: Path) -> None:
    with pytest.raises(ActregError, match="actreg data fetch austen"):
        load_corpus("austen", data_dir=tmp_path / "none")
    (corpus_dir / "valid.txt").unlink()
    with pytest.raises(ActregError, match="has no valid.txt"):
        load_corpus(corpus_dir)
    (corpus_dir / "valid.txt").write_text("a\n")
    with pytest.raises(ActregError, match="vocab_size"):
        load_corpus(tmp_path / "tiny", vocab_size=2)


def test_batchify_and_bptt() -> None:
    ids = torch.arange(11)
    data = batchify(ids, 2)
    assert data.shape == (5, 2)
    assert data[:, 0].tolist() == [0, 1, 2, 3, 4] and data[:, 1].tolist() == [5, 6, 7, 8, 9]
    chunks = list(bptt_batches(data, 3))
    assert [x.shape[0] for x, _ in chunks] == [3, 1]
    for x, y in chunks:
        assert torch.equal(y, x + 1)
    with pytest.raises(ActregError, match="batch_size"):
        batchify(ids, 0)
    with pytest.raises(ActregError, match="1-D"):
        batchify(data, 2)
    with pytest.raises(ActregError, match="bptt"):
        list(bptt_batches(data, 0))


def test_sentences(corpus_dir: Path) -> None:
    c = load_corpus(corpus_dir, vocab_size=5)
    out = sentences("train", c, max_len=3)
    assert [t.tolist() for t in out] == [[2]]  # "a b b c" and "c <unk> d a" too long
    assert len(sentences("train", c)) == 3
    assert [t.tolist() for t in sentences(["a q", ""], c)] == [[3, 0]]
    assert len(sentences(corpus_dir / "test.txt", c, max_len=3)) == 1
    with pytest.raises(ActregError, match="not a file"):
        sentences("nope", c)
