"""Word-level text corpora (Penn Treebank / WikiText layout) and language-model batching.

A corpus is a folder with ``train.txt``, ``valid.txt`` and ``test.txt``. Tokens are split on
whitespace and every line ends with an ``<eos>`` token (empty lines too, as in the reference
PTB code). The vocabulary comes from the training split only: the ``vocab_size`` most frequent
words (ties broken alphabetically), with ``<unk>`` and ``<eos>`` counted in ``vocab_size``;
everything else maps to ``<unk>`` (an ``<unk>`` already in the text stays ``<unk>``).

Example:
    >>> ids = torch.arange(10)
    >>> batchify(ids, 3).T.tolist()
    [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    >>> [(x.shape[0], y[0, 0].item()) for x, y in bptt_batches(batchify(ids, 3), 2)]
    [(2, 1)]
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from actreg._errors import ActregError
from actreg.lab.data._store import resolve_data_dir

__all__ = ["EOS", "UNK", "Corpus", "batchify", "bptt_batches", "load_corpus", "sentences"]

EOS = "<eos>"
UNK = "<unk>"
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


@dataclass
class Corpus:
    """Token ids of a corpus' three splits and its vocabulary.

    Attributes:
        train, valid, test: 1-D int64 token ids (``<eos>`` after every line).
        vocab: id -> word (``vocab[0] == "<unk>"``, ``vocab[1] == "<eos>"``).
        stoi: word -> id.
        info: JSON-serializable facts: folder, sizes, vocab size, OOV rates, checksums.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: list[str]
    stoi: dict[str, int] = field(repr=False)
    info: dict[str, Any] = field(repr=False)

    def encode(self, line: str) -> Tensor:
        """Ids of one line's tokens (no ``<eos>``); unknown words -> ``<unk>``."""
        unk = self.stoi[UNK]
        return torch.tensor([self.stoi.get(w, unk) for w in line.split()], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The words of ``ids`` joined by spaces."""
        values = ids.tolist() if isinstance(ids, Tensor) else ids
        return " ".join(self.vocab[i] for i in values)


def _folder(path_or_name: str | Path, data_dir: str | Path | None) -> Path:
    path = Path(path_or_name).expanduser()
    if path.exists() and not path.is_dir():
        raise ActregError(
            f"{path} is a file: data= takes a corpus folder (train.txt, valid.txt, test.txt) "
            "or the name of one in the data directory, such as austen"
        )
    if not path.is_dir():
        path = resolve_data_dir(data_dir) / str(path_or_name)
    if not path.is_dir():
        raise ActregError(
            f"corpus folder {path} does not exist. For the Austen corpus run "
            "`actreg data fetch austen` (with `--data-dir DIR` or ACTREG_DATA=DIR for another "
            "data directory); any folder with train.txt, valid.txt, test.txt also works"
        )
    for name in SPLIT_FILES:
        if not (path / name).is_file():
            raise ActregError(
                f"corpus folder {path} has no {name}; a corpus needs train.txt, valid.txt "
                "and test.txt (for Austen: `actreg data fetch austen`)"
            )
    return path


def _read_lines(path: Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [[*line.split(), EOS] for line in fh]
    except UnicodeDecodeError as err:
        raise ActregError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}): a corpus file is plain text, one sentence per line; convert it "
            "(e.g. iconv -t utf-8) or point data= at a text corpus"
        ) from None
    if not any(len(line) > 1 for line in lines):
        raise ActregError(
            f"{path} holds no words: each of train.txt, valid.txt and test.txt needs text, "
            "one sentence per line"
        )
    return lines


def build_vocab(lines: list[list[str]], vocab_size: int) -> list[str]:
    """``<unk>``, ``<eos>``, then the most frequent words (ties alphabetical).

    Example:
        >>> build_vocab([["b", "a", "<eos>"], ["a", "c", "<eos>"]], 4)
        ['<unk>', '<eos>', 'a', 'b']
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
        raise ActregError(f"vocab_size must be an int >= 3, got {vocab_size!r}")
    counts = Counter(w for line in lines for w in line if w not in (UNK, EOS))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [UNK, EOS] + [w for w, _ in ranked[: vocab_size - 2]]


def load_corpus(
    path_or_name: str | Path, vocab_size: int = 10000, data_dir: str | Path | None = None
) -> Corpus:
    """Load a corpus folder (a path, or a folder name under the data directory).

    Args:
        path_or_name: e.g. ``"austen"`` or ``"/data/ptb"``.
        vocab_size: words kept, ``<unk>`` and ``<eos>`` included.
        data_dir: the data directory for names (default ``$ACTREG_DATA`` or the user cache).

    Raises:
        ActregError: missing folder or file (naming it and the fetch command).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for f in ("train.txt", "valid.txt", "test.txt"):
        ...         _ = (pathlib.Path(d) / f).write_text("the cat sat\\nthe dog\\n")
        ...     c = load_corpus(d, vocab_size=4)
        >>> c.vocab, c.train.tolist(), c.info["oov_rate"]["test"]
        (['<unk>', '<eos>', 'the', 'cat'], [2, 3, 0, 1, 2, 0, 1], 0.2857)
    """
    folder = _folder(path_or_name, data_dir)
    splits = {name[:-4]: _read_lines(folder / name) for name in SPLIT_FILES}
    vocab = build_vocab(splits["train"], vocab_size)
    stoi = {w: i for i, w in enumerate(vocab)}
    unk = stoi[UNK]
    tensors: dict[str, Tensor] = {}
    oov: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for split, lines in splits.items():
        ids = [stoi.get(w, unk) for line in lines for w in line]
        tensors[split] = torch.tensor(ids, dtype=torch.long)
        tokens[split] = len(ids)
        oov[split] = round(sum(i == unk for i in ids) / max(1, len(ids)), 4)
    checksums = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SPLIT_FILES
    }
    info = {
        "folder": str(folder.resolve()),
        "tokens": tokens,
        "lines": {split: len(lines) for split, lines in splits.items()},
        "vocab_size": len(vocab),
        "vocab_size_requested": vocab_size,
        "train_types": len({w for line in splits["train"] for w in line}),
        "oov_rate": oov,
        "files_sha256": checksums,
    }
    return Corpus(tensors["train"], tensors["valid"], tensors["test"], vocab, stoi, info)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D id stream into ``batch_size`` contiguous streams, time-first ``(T, B)``.

    The tail that does not fill a whole column is dropped.
    """
    if ids.dim() != 1:
        raise ActregError(f"batchify needs a 1-D id tensor, got shape {tuple(ids.shape)}")
    if batch_size < 1 or len(ids) < batch_size:
        raise ActregError(f"batch_size must be in 1..{len(ids)} (the stream length)")
    steps = len(ids) // batch_size
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_batches(data: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(input, target)`` chunks of up to ``bptt`` steps; target is input shifted by 1."""
    if bptt < 1:
        raise ActregError(f"bptt must be >= 1, got {bptt}")
    for i in range(0, data.size(0) - 1, bptt):
        n = min(bptt, data.size(0) - 1 - i)
        yield data[i : i + n], data[i + 1 : i + 1 + n]


def sentences(
    path_or_split: str | Path | list[str], corpus: Corpus, max_len: int | None = None
) -> list[Tensor]:
    """Token ids per line (no ``<eos>``) for a sequence autoencoder, dropping empty lines and
    lines longer than ``max_len``.

    Args:
        path_or_split: a text file, a split name of ``corpus`` (``"train"``, ``"valid"``,
            ``"test"``) whose file is read from the corpus folder, or a list of lines.
        corpus: gives the vocabulary.
        max_len: longest line kept, in tokens (None: all).
    """
    if isinstance(path_or_split, list):
        lines = path_or_split
    else:
        path = Path(path_or_split)
        if str(path_or_split) in ("train", "valid", "test"):
            path = Path(corpus.info["folder"]) / f"{path_or_split}.txt"
        if not path.is_file():
            raise ActregError(f"sentences(): {path} is not a file or a split name")
        lines = path.read_text(encoding="utf-8").splitlines()
    out = [corpus.encode(line) for line in lines]
    return [t for t in out if len(t) > 0 and (max_len is None or len(t) <= max_len)]
