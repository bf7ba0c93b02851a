"""Storage URLs: the one masker (moved here from tests/test_io.py, where the library had a
second one) always returns a parsable URL without the password."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytest.importorskip("sqlalchemy")

from actreg import ActregError
from actreg.lab.search._db import safe_url, scrub


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg2://u:p%40ss@h:5432/d?x=1", "postgresql+psycopg2://u:***@h:5432/d?x=1"),
        ("mysql://user:pw@host:3306/db", "mysql://user:***@host:3306/db"),
        ("redis://:pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("postgresql://user:s:e@c@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///runs/search.db", "sqlite:///runs/search.db"),
        ("sqlite:////tmp/a:b@c/search.db", "sqlite:////tmp/a:b@c/search.db"),
        ("https://h/db?user=a&password=b&x=1", "https://h/db?user=a&password=***&x=1"),
        ("runs/search.db", "runs/search.db"),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:a/b@c:d@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:100%@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p[ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:ab?cd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:ab#cd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw@h/db?opt=a@b", "postgresql://u:***@h/db?opt=a@b"),
        (
            "postgresql://h/db?sslmode=require&password=p@ss&token=t0k",
            "postgresql://h/db?sslmode=require&password=***&token=***",
        ),
        ("postgresql://u:pw@h:port/db", "postgresql://***"),
        ("postgresql//actreg:hunter2@db/runs", "postgresql//actreg:***@db/runs"),
        ("u:hunter2@h/db", "u:***@h/db"),
    ],
    ids=[
        "pg",
        "pg-driver-port",
        "mysql",
        "no-user",
        "colon-at",
        "no-pw",
        "sqlite",
        "sqlite-at-in-path",
        "query",
        "path",
        "pw-at",
        "pw-slash",
        "pw-slash-colon-at",
        "pw-percent",
        "pw-bracket",
        "pw-question",
        "pw-hash",
        "at-in-query",
        "query-secrets",
        "bad-port",
        "no-colon",
        "no-scheme",
    ],
)
def test_safe_url(url, masked):
    out = safe_url(url)
    assert out == masked
    parts = urlsplit(out)  # always parsable, port included
    assert parts.port is None or isinstance(parts.port, int)
    for secret in ("secret", "hunter2", "p@ss", "pa/ss", "a/b@c:d", "100%", "p[ss", "ab?cd", "t0k"):
        assert secret not in out


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@ss@h:5432/db", "postgresql://u:p%40ss@h/db", "mysql://u:a:b@h/db"],
    ids=["at", "escaped", "colon"],
)
def test_safe_url_parses_as_a_storage_url(url):
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(safe_url(url))
    assert parsed.password == "***" and parsed.host == "h"


def test_safe_url_needs_a_string():
    with pytest.raises(ActregError, match="needs a string"):
        safe_url(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "secret"),
    [("postgresql://u:p@ss@h/db", "p@ss"), ("postgresql://u:p%40ss@h/db", "p@ss")],
    ids=["raw", "escaped"],
)
def test_scrub_hides_the_password_in_messages(url, secret):
    text = f'connecting to {url}: password "{secret}" rejected for user u ({url})'
    out = scrub(text, url)
    assert secret not in out and "p%40ss" not in out
    assert "postgresql://u:***@h/db" in out
