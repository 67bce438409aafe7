"""Preference sources and their errors: a file (``.jsonl``, ``.json``, ``.parquet``), a bundled set
(``builtin:<name>``, shipped in this folder), a ``datasets.Dataset`` or a dataset name, read into
located records; `PreferenceDataError` names the source, the row, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUILTIN_PREFIX = "builtin:"
QUICKSTART = "builtin:quickstart"
QUICKSTART_HELDOUT = "builtin:quickstart_heldout"


# Why a row can be dropped under skip_invalid; the keys of the `skipped` counters.
REASONS = {
    "invalid_json": "a JSONL line that is not valid JSON",
    "not_an_object": "a row that is not a JSON object",
    "missing_column": "a row without one of the prompt/chosen/rejected columns",
    "wrong_type": "a value that is neither a string nor a well-formed message list",
    "empty": "an empty or whitespace-only prompt, response or message",
    "identical": "chosen identical to rejected",
    "wrong_label": "an unpaired row whose label is not true or false",
    "prompt_too_long": "a prompt that leaves no room for a response token",
    "overlong": "a prompt or response over its token budget, under data.on_overlong=skip",
}


class PreferenceDataError(ValueError):
    """One bad row or source, with where it is and how to fix it.

    Args:
        problem: what is wrong, in words.
        source: the file or dataset name.
        fix: what the user should change.
        reason: a key of `REASONS` (counted under ``skip_invalid``), or None when the
            problem concerns the whole source and cannot be skipped.
        location: ``line N`` / ``row N``, or None for the whole source.
        field: ``prompt`` | ``chosen`` | ``rejected`` (| ``completion`` | ``label``), or None.
    """

    def __init__(self, problem: str, *, source: str, fix: str, reason: str | None = None,
                 location: str | None = None, field: str | None = None):
        self.source, self.location, self.field, self.reason = source, location, field, reason
        where = ", ".join(part for part in (
            source, location, f"field '{field}'" if field else None) if part)
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def bundled_path(name: str) -> Path:
    """Path of a preference set shipped in ``pdalign/data/`` (``quickstart``, ...)."""
    path = Path(__file__).parent / f"{name}.jsonl"
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise PreferenceDataError(
            "no such bundled data set", source=f"{BUILTIN_PREFIX}{name}",
            fix=f"use one of {[BUILTIN_PREFIX + s for s in shipped]}")
    return path


def source_file(source: Any) -> Path | None:
    """The file behind a preference source (for provenance hashes), or None for a dataset."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith(BUILTIN_PREFIX):
            return bundled_path(text[len(BUILTIN_PREFIX):])
        if Path(text).is_file():
            return Path(text)
    return None


def read_records(source: Any, split: str, config_key: str = "data.train",
                  ) -> tuple[str, list[tuple[str, Any]]]:
    """(source name, [(location, record)]); an unreadable JSONL line is an error record."""
    if not isinstance(source, (str, Path)):
        return _dataset_records(source, split, name=None)
    text = str(source)
    if text.startswith(BUILTIN_PREFIX):
        return _file_records(bundled_path(text[len(BUILTIN_PREFIX):]))
    path = Path(text).expanduser()
    if path.is_file():
        return _file_records(path)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        raise PreferenceDataError("file not found", source=str(path),
                                  fix=f"check {config_key} (relative paths start at the "
                                      f"run's working directory; Hydra changes it unless "
                                      f"hydra.job.chdir=false)")
    import datasets  # slow to import; only a hub name or data directory needs it

    try:
        loaded = datasets.load_dataset(text, split=split)
    except Exception as err:  # offline, unknown name, bad split: one message either way
        raise PreferenceDataError(
            f"datasets.load_dataset could not load it ({type(err).__name__}: {err})",
            source=text, fix=f"set {config_key} to a .jsonl/.json/.parquet path, or a hub "
                             f"dataset id that is cached locally, and a split that exists",
        ) from err
    return _dataset_records(loaded, split, name=f"{text} [{split}]")


def _file_records(path: Path) -> tuple[str, list[tuple[str, Any]]]:
    name = str(path)
    if path.suffix == ".parquet":
        import pyarrow as pa  # only a .parquet source needs it
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:  # truncated, not Parquet, unreadable
            reason = str(err).splitlines()[0].removeprefix(
                f"Could not open Parquet input source '{path}': ").rstrip(".")
            raise PreferenceDataError(
                f"cannot be read as Parquet ({reason})", source=name,
                fix="re-write the file (e.g. datasets.Dataset.to_parquet or "
                    "pandas.DataFrame.to_parquet) or copy it again in full") from err
        return name, [(f"row {i}", record) for i, record in enumerate(table, 1)]
    if path.suffix not in (".jsonl", ".json"):
        raise PreferenceDataError(f"unsupported file type {path.suffix!r}", source=name,
                                  fix="convert it to .jsonl, .json or .parquet")
    text = _read_utf8(path)
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as err:
            # datasets' to_json writes one object per line under a .json name; read it so.
            if not err.msg.startswith("Extra data"):
                raise PreferenceDataError(
                    f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                    source=name, fix="repair the file (a JSON array of objects, or one "
                                     "object per line)") from err
        else:
            if not isinstance(whole, list):
                raise PreferenceDataError(
                    f"the top-level JSON value is a {type(whole).__name__}, not an array",
                    source=name, fix="store the rows as a JSON array of objects")
            return name, [(f"row {i}", record) for i, record in enumerate(whole, 1)]
    return name, _jsonl_records(text, name)


def _read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark (Excel, Notepad) is dropped, not a row error."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")  # e.g. PowerShell's `>` redirection
        line = data[:err.start].count(b"\n") + 1
        raise PreferenceDataError(
            f"is not UTF-8 text: byte {data[err.start]:#04x} at byte offset {err.start} (line "
            f"{line}) cannot be decoded"
            + (" (the file starts with a UTF-16 byte-order mark)" if utf16 else ""),
            source=str(path),
            fix=f"re-save it as UTF-8, e.g. iconv -f {'UTF-16' if utf16 else '<its encoding>'} "
                f"-t UTF-8 {path.name} > utf8{path.suffix}, or your editor's save-with-encoding"
        ) from err


def _jsonl_records(text: str, name: str) -> list[tuple[str, Any]]:
    records: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():  # blank lines (a trailing newline, spacing) are not rows
            continue
        location = f"line {number}"
        try:
            records.append((location, json.loads(line)))
        except json.JSONDecodeError as err:
            records.append((location, PreferenceDataError(
                f"invalid JSON ({err.msg} at column {err.colno})", source=name,
                location=location, reason="invalid_json",
                fix="repair or delete this line, or set data.skip_invalid=true")))
    return records


def _dataset_records(dataset: Any, split: str, name: str | None) -> tuple[str, list]:
    if not hasattr(dataset, "column_names"):
        raise TypeError(f"data source must be a path, a name or a datasets.Dataset, "
                        f"not {type(dataset).__name__}")
    if isinstance(dataset.column_names, dict):  # a DatasetDict: pick the split
        if split not in dataset:
            raise PreferenceDataError(f"no split {split!r}", source=name or "DatasetDict",
                                      fix=f"set the split to one of {list(dataset)}")
        dataset = dataset[split]
    name = name or f"datasets.Dataset({dataset.info.dataset_name or 'in memory'})"
    return name, [(f"row {i}", record) for i, record in enumerate(dataset, 1)]
