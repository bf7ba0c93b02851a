"""Reports: Markdown tables of ``results.json`` files, side by side, with their pictures.

The report sits above the experiments: it reads the files they wrote
(:func:`actreg.lab.experiments.load_results`) and asks the registry for each run's
summary table and default settings. The experiments never import it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import get, load_results

__all__ = ["format_table", "write_report"]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if 0 < abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (columns: the union of keys, in first-seen order).

    Example:
        >>> print(format_table([{"variant": "l1", "error": 0.0123}]))
        | variant | error |
        |---|---|
        | l1 | 0.0123 |
    """
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_report(
    run_dirs: Sequence[str | Path], out: str | Path, *, copy_images: bool = False
) -> Path:
    """Write a Markdown report putting the runs side by side, with their PNGs.

    Each run gets a table from its experiment's summary, the settings that differ from
    the experiment's defaults, the command to reproduce it, and its pictures. A folder
    written by ``actreg search`` (holding ``search.md``) contributes its trial table and
    trade-off plot. With ``copy_images`` the PNGs are copied into an ``img/`` folder
    beside the report, so the report can be committed without the run folders.
    """
    if not run_dirs:
        raise ActregError("report needs at least one run folder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# actreg report", ""]
    searches = [Path(d) for d in run_dirs if (Path(d) / "search.md").exists()]
    for folder in searches:  # a coefficient search: embed its table and trade-off plot
        text = (folder / "search.md").read_text()
        rel = os.path.relpath(folder, out.parent)
        text = re.sub(r"\](\((?!/))([^)]+\.png\))", rf"]\1{rel}/\2", text)
        parts += [text.replace("# Coefficient search", "## Coefficient search", 1), ""]
    docs = [load_results(d) for d in run_dirs if Path(d) not in searches]
    for doc in docs:
        exp = get(doc["experiment"])
        missing = [k for k in ("config", "version") if k not in doc]
        if missing:
            raise ActregError(
                f"{doc['_path']} has no {' or '.join(map(repr, missing))}: not a whole "
                "results file (one `actreg run` writes it at its end); rerun that run"
            )
        defaults = asdict(exp.config())
        run_dir = Path(doc["_path"]).parent
        sets = " ".join(
            f"--set {k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in doc["config"].items()
            if defaults.get(k) != (tuple(v) if isinstance(v, list) else v)
            and k not in ("progress",)
        )
        parts += [
            f"## {doc['experiment']}: `{run_dir}`",
            "",
            f"actreg {doc['version']}, torch {doc.get('torch', '?')}. Reproduce with:",
            "",
            f"    actreg run {doc['experiment']} {sets}".rstrip(),
            "",
            format_table(_summary(exp, doc)),
            "",
        ]
        for name, stored in doc.get("pictures", {}).items():
            pic = _picture(run_dir, stored)
            if copy_images:
                target = out.parent / "img" / f"{doc['experiment']}-{run_dir.name}-{pic.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pic, target)
                pic = target
            rel = os.path.relpath(pic, out.parent)
            parts += [f"![{name}]({rel})", ""]
    out.write_text("\n".join(parts))
    return out


def _summary(exp: Any, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The experiment's summary rows of ``doc``; a results file lacking a part is refused."""
    try:
        rows: list[dict[str, Any]] = exp.summary(doc)
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ActregError(
            f"{doc['_path']} lacks what a {doc['experiment']} summary reads ({err!r}): a "
            "results file of another version, or edited; rerun that run"
        ) from None
    return rows


def _picture(run_dir: Path, stored: str) -> Path:
    """A picture of a run: its path is stored relative to the run folder.

    Raises:
        ActregError: if the file is not there (moved or deleted), naming it.
    """
    path = Path(stored) if Path(stored).is_absolute() else run_dir / stored
    if not path.is_file():
        raise ActregError(
            f"picture {stored!r} of {run_dir} is missing ({path}); rerun the experiment, or "
            f"report the folder it was written to"
        )
    return path
