"""Fixtures the sequence experiments' tests share: tiny word corpora in the PTB layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

#: The tiny corpora's words: 16 of them, so a vocabulary of 12-20 keeps most.
WORDS = "the cat sat on a mat and dog ran to big red house in small garden".split()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Callable[..., Path]:
    """``make(train, valid, test)``: a folder with ``train.txt``, ``valid.txt`` and
    ``test.txt`` of that many lines of 3-8 random words (seeded), made once per sizes."""
    made: dict[tuple[int, int, int], Path] = {}

    def make(train: int, valid: int, test: int) -> Path:
        sizes = (train, valid, test)
        if sizes not in made:
            folder = tmp_path_factory.mktemp("tiny_corpus")
            gen = torch.Generator().manual_seed(0)
            for split, n_lines in zip(("train", "valid", "test"), sizes, strict=True):
                lines = []
                for _ in range(n_lines):
                    n = int(torch.randint(3, 9, (1,), generator=gen))
                    idx = torch.randint(0, len(WORDS), (n,), generator=gen).tolist()
                    lines.append(" ".join(WORDS[i] for i in idx))
                (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
            made[sizes] = folder
        return made[sizes]

    return make
