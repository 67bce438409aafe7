"""Write a file so that a crash never leaves it half-written: temp file beside it, then rename.

Every result, report, manifest, cache and paper file pdalign writes goes through `atomic_open`;
a reader sees either the old file or the complete new one; `atomic_dir` does the same for a
directory (exports, merged policies). (Checkpoints, written by every rank, use the same idea in
`pdalign.training.checkpoint`.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; on success rename it onto ``path``.

    Args:
        path: the final file; its directory is created if missing.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_open(path) as fh:
        fh.write(text)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temp directory beside ``path`` to fill; on success it replaces ``path`` (an existing
    directory there is removed first), on failure it is removed.

    Args:
        path: the final directory; its parent must exist.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
