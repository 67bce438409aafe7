"""Preference data: load, validate, apply the chat template, mask, truncate, collate.

The path from a file to a training batch is four plain steps, one function each:

    rows, skipped = load_preference_rows(source)            # validated PreferenceRow list
    train, heldout = split_heldout(rows, 0.1, seed=0)       # optional, deterministic
    features, skipped = tokenize_rows(tokenizer, train, max_length=512, max_prompt_length=256)
    batch = collate(features[:8], tokenizer.pad_token_id)  # one (2B, T) forward pass

Unpaired rows take the same steps (`load_unpaired_rows`, `tokenize_rows`, `collate`); their
batch is also (2B, T): B (prompt, completion) rows, then the B mismatched rows KTO estimates
its reference point from.

`build_dataset` runs the first three for the trainer. Everything up to `collate` is plain
Python (no torch), so bad data is caught before any model loads.

Sources
    A ``.jsonl`` / ``.json`` / ``.parquet`` file, ``builtin:<name>`` for a set shipped in
    ``pdalign/data/`` (``builtin:quickstart``), a ``datasets.Dataset`` (or ``DatasetDict``
    plus ``split``), or any other string, which goes to ``datasets.load_dataset(name,
    split=split)`` (a hub id or a local data directory). A ``.json`` file may hold one JSON
    array of objects or, as ``datasets.Dataset.to_json`` writes it, one object per line.

Row formats
    Each row has ``prompt``, ``chosen`` and ``rejected`` (renamed with ``columns``, e.g.
    ``{"prompt": "question"}``). Each value is either a plain string or a list of
    ``{"role", "content"}`` messages (TRL's conversational format: the prompt's messages,
    then the assistant message(s) of each answer). A plain prompt is one user message and a
    plain answer one assistant message.

    Unpaired feedback (for KTO; `load_unpaired_rows`) has ``prompt``, ``completion`` and
    ``label`` (true = desirable, false = undesirable), TRL's unpaired preference format; the
    same value rules apply to ``completion`` as to an answer, and a source must hold both
    labels. `unpair_rows` turns pairs into such rows (chosen -> desirable, rejected ->
    undesirable), TRL's ``unpair_preference_dataset``: ``build_dataset(unpair=True)``.

Tokens
    prompt tokens = the chat template of the prompt messages with ``add_generation_prompt``;
    response tokens = the rest of the templated full conversation, so a response ends with
    the template's end-of-turn (``<|im_end|>`` for SmolLM2). Whitespace-only tokens that a
    template emits after the end-of-turn (SmolLM2 writes ``<|im_end|>\\n``) are dropped:
    generation stops at end-of-turn, so the policy never produces them and they would only
    add noise to sequence log-probs. Two fallbacks, both documented decisions:
    - when the templated conversation does not start with the templated prompt's tokens (a
      template that rewrites earlier turns), the response is its text + eos, tokenized on
      its own, and the feature is flagged ``template_fallback``;
    - a tokenizer without a chat template takes the raw prompt string (with the tokenizer's
      own special tokens, e.g. BOS) and response text + eos, joined with no separator; end
      such prompts with your own separator. Message lists then are an error.

Labels
    ``labels`` align with ``input_ids`` (not shifted; the log-prob code shifts by one) and
    are -100 on every prompt token and on padding, so only response tokens are scored.

Truncation policy (``max_length`` counts prompt + response tokens)
    1. A prompt longer than ``max_prompt_length`` keeps its END (left truncation): the last
       user turn and the generation header matter more than an old system message. With
       ``truncate_prompt=False`` an over-long prompt is an error instead. Default: truncate,
       as TRL does, because real sets carry a few long prompts that are not worth a crash.
    2. Each response keeps its START and is cut to fit ``max_length``; a cut response loses
       its end-of-turn token.
    3. A prompt that (after step 1) leaves no room for one response token is an error.
    Chosen and rejected always share the identical prompt tokens.

Errors
    Every bad row raises one `PreferenceDataError` naming the source, the row (``line N``,
    1-based, for JSONL; ``row N`` otherwise), the field, and the fix. With
    ``skip_invalid=True`` bad rows are dropped instead and counted per reason (see
    `REASONS`); a source with no good row left is still an error. A file that cannot be
    read at all (not UTF-8, a corrupt Parquet file) is one error for the whole source; a
    UTF-8 byte-order mark is read, not an error.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED_FIELDS = ("prompt", "completion", "label")
BUILTIN_PREFIX = "builtin:"
QUICKSTART = "builtin:quickstart"
QUICKSTART_HELDOUT = "builtin:quickstart_heldout"
IGNORE_INDEX = -100  # the label value torch's cross-entropy and our log-prob code skip

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
}

Value = str | list  # a plain string, or a list of {"role": str, "content": str} dicts


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


@dataclass(frozen=True)
class PreferenceRow:
    """One validated preference pair, values as given (string or message list).

    Args:
        prompt, chosen, rejected: the row's values after the column mapping.
        index: 0-based position in the source, kept when other rows are skipped, so a
            reference-log-prob cache keyed by it stays valid.
        source: file or dataset name, for error messages.
        location: ``line N`` (JSONL) or ``row N``, 1-based, for error messages.
    """

    prompt: Value
    chosen: Value
    rejected: Value
    index: int
    source: str
    location: str


@dataclass(frozen=True)
class UnpairedRow:
    """One validated unpaired row: a completion and whether it is desirable.

    Args:
        prompt, completion: the row's values after the column mapping (string or messages).
        label: True = desirable, False = undesirable.
        index, source, location: as in `PreferenceRow` (for a split pair, ``index`` counts the
            unpaired rows: pair k gives rows 2k and 2k + 1).
    """

    prompt: Value
    completion: Value
    label: bool
    index: int
    source: str
    location: str


# ---- loading -----------------------------------------------------------------------------

def bundled_path(name: str) -> Path:
    """Path of a preference set shipped in ``pdalign/data/`` (``quickstart``, ...)."""
    path = Path(__file__).parent / "data" / f"{name}.jsonl"
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


def load_preference_rows(source: Any, columns: Mapping[str, str] | None = None,
                         skip_invalid: bool = False, split: str = "train",
                         config_key: str = "data.train",
                         ) -> tuple[list[PreferenceRow], Counter]:
    """Read and validate every row of a preference source.

    Args:
        source: a file path, ``builtin:<name>``, a ``datasets.Dataset``/``DatasetDict``, or a
            name for ``datasets.load_dataset`` (see the module docstring).
        columns: maps our field names to the source's column names, e.g.
            ``{"prompt": "question"}``; fields left out keep their own name. Default None.
        skip_invalid: drop bad rows and count them per reason instead of raising on the
            first one. Default False.
        split: the split to take from a ``DatasetDict`` or ``load_dataset``. Default "train".
        config_key: the config key that named ``source``, for error messages. Default
            ``data.train``.
    Returns (rows, skipped): the valid rows in source order and a Counter of dropped rows
    per `REASONS` key (empty unless ``skip_invalid``).
    """
    mapping = _column_mapping(columns)
    name, records = _read_records(source, split, config_key)
    if not records:
        raise PreferenceDataError("contains no rows", source=name,
                                  fix=f"point {config_key} at a non-empty preference file")
    rows: list[PreferenceRow] = []
    skipped: Counter = Counter()
    first_error: PreferenceDataError | None = None
    for index, (location, record) in enumerate(records):
        try:
            rows.append(_validate_record(record, mapping, index, name, location))
        except PreferenceDataError as err:
            if not skip_invalid:
                raise
            skipped[err.reason] += 1
            first_error = first_error or err
    _report_skipped(name, rows, skipped, first_error)
    return rows, skipped


def load_unpaired_rows(source: Any, columns: Mapping[str, str] | None = None,
                       skip_invalid: bool = False, split: str = "train",
                       config_key: str = "data.train") -> tuple[list[UnpairedRow], Counter]:
    """Read and validate every row of an unpaired source (``prompt``, ``completion``,
    ``label``), as `load_preference_rows` does for pairs; a source whose rows all carry one
    label is an error.

    Args:
        source, columns, skip_invalid, split, config_key: as in `load_preference_rows`;
            ``columns`` maps ``completion`` and ``label`` too.
    Returns (rows, skipped): the valid rows in source order and a Counter of dropped rows per
    `REASONS` key.
    """
    mapping = _column_mapping(columns, UNPAIRED_FIELDS)
    name, records = _read_records(source, split, config_key)
    if not records:
        raise PreferenceDataError("contains no rows", source=name,
                                  fix=f"point {config_key} at a non-empty file of unpaired rows")
    rows: list[UnpairedRow] = []
    skipped: Counter = Counter()
    first_error: PreferenceDataError | None = None
    for index, (location, record) in enumerate(records):
        try:
            rows.append(_validate_unpaired(record, mapping, index, name, location))
        except PreferenceDataError as err:
            if not skip_invalid:
                raise
            skipped[err.reason] += 1
            first_error = first_error or err
    _report_skipped(name, rows, skipped, first_error)
    check_both_labels(rows, name, config_key)
    return rows, skipped


def unpair_rows(rows: Sequence[PreferenceRow]) -> list[UnpairedRow]:
    """Each pair as two unpaired rows: (prompt, chosen, True) then (prompt, rejected, False).

    TRL's ``unpair_preference_dataset``; pair k becomes rows 2k and 2k + 1, which share a
    prompt, so `split_heldout` keeps them on one side.
    """
    out: list[UnpairedRow] = []
    for k, row in enumerate(rows):
        for j, (completion, label) in enumerate(((row.chosen, True), (row.rejected, False))):
            out.append(UnpairedRow(row.prompt, completion, label, 2 * k + j, row.source,
                                   row.location))
    return out


def check_both_labels(rows: Sequence[UnpairedRow], source: str,
                      config_key: str = "data.train", fix: str | None = None) -> None:
    """Raise unless ``rows`` hold at least one desirable and one undesirable row."""
    n_desirable = sum(row.label for row in rows)
    if 0 < n_desirable < len(rows):
        return
    have, lack = ("true", "false") if n_desirable else ("false", "true")
    raise PreferenceDataError(
        f"every one of its {len(rows)} rows has label={have}: KTO needs desirable and "
        f"undesirable examples to place its reference point between", source=source,
        fix=fix or f"add rows with label={lack} to {config_key} (or, for a paired file, set "
                   f"data.unpair=true: chosen -> true, rejected -> false)")


def _validate_unpaired(record: Any, mapping: dict[str, str], index: int, source: str,
                       location: str) -> UnpairedRow:
    if isinstance(record, PreferenceDataError):
        raise record
    if not isinstance(record, Mapping):
        raise PreferenceDataError(
            f"expected an object with prompt/completion/label, got {type(record).__name__}",
            source=source, location=location, reason="not_an_object",
            fix="write each row as a JSON object")
    values = {}
    for field in UNPAIRED_FIELDS:
        column = mapping[field]
        if column not in record:
            paired = field != "prompt" and {"chosen", "rejected"} <= set(record)
            raise PreferenceDataError(
                f"column {column!r} not found; the row has columns {sorted(record)}",
                source=source, location=location, field=field, reason="missing_column",
                fix="these are preference pairs: set data.unpair=true to train on each as a "
                    "desirable (chosen) and an undesirable (rejected) row" if paired else
                    f"set data.columns.{field}=<name> to the column that holds the {field}")
        if field == "label":
            label = record[column]
            if not isinstance(label, bool):
                raise PreferenceDataError(
                    f"expected true or false, got {type(label).__name__} {label!r}",
                    source=source, location=location, field=field, reason="wrong_label",
                    fix="write the label as a JSON boolean: true = desirable, false = "
                        "undesirable (or set data.skip_invalid=true)")
            values[field] = label
        else:
            values[field] = _check_value(record[column], field, source, location)
    return UnpairedRow(index=index, source=source, location=location, **values)


def _column_mapping(columns: Mapping[str, str] | None,
                    fields: Sequence[str] = FIELDS) -> dict[str, str]:
    """{field: column} for ``fields``; ``columns`` may also name the other format's fields."""
    known = dict.fromkeys(FIELDS + UNPAIRED_FIELDS)
    mapping = {field: field for field in fields}
    for field, column in dict(columns or {}).items():
        if field not in known:
            raise ValueError(f"data.columns has an unknown key {field!r}; "
                             f"the keys are {list(known)}")
        if field in mapping:
            mapping[field] = str(column)
    return mapping


def _read_records(source: Any, split: str, config_key: str = "data.train",
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
        import pyarrow as pa
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


def _validate_record(record: Any, mapping: dict[str, str], index: int, source: str,
                     location: str) -> PreferenceRow:
    if isinstance(record, PreferenceDataError):
        raise record
    if not isinstance(record, Mapping):
        raise PreferenceDataError(
            f"expected an object with prompt/chosen/rejected, got {type(record).__name__}",
            source=source, location=location, reason="not_an_object",
            fix="write each row as a JSON object")
    values = {}
    for field in FIELDS:
        column = mapping[field]
        if column not in record:
            unpaired = field != "prompt" and {"completion", "label"} <= set(record)
            raise PreferenceDataError(
                f"column {column!r} not found; the row has columns {sorted(record)}",
                source=source, location=location, field=field, reason="missing_column",
                fix="these are unpaired rows (completion, label): train on them with "
                    "method=kto or method=primal_dual method.objective=kto" if unpaired else
                    f"set data.columns.{field}=<name> to the column that holds the {field}")
        values[field] = _check_value(record[column], field, source, location)
    if _canonical(values["chosen"]) == _canonical(values["rejected"]):
        raise PreferenceDataError(
            "chosen is identical to rejected, so the pair carries no preference",
            source=source, location=location, field="rejected", reason="identical",
            fix="remove the row or set data.skip_invalid=true")
    return PreferenceRow(index=index, source=source, location=location, **values)


def _check_value(value: Any, field: str, source: str, location: str) -> Value:
    """Return ``value`` if it is a non-empty string or a well-formed message list."""
    def fail(problem: str, reason: str, fix: str) -> PreferenceDataError:
        return PreferenceDataError(problem, source=source, location=location, field=field,
                                   reason=reason, fix=fix)

    empty_fix = "fill it in, or remove the row, or set data.skip_invalid=true"
    if isinstance(value, str):
        if not value.strip():
            raise fail("empty or whitespace-only text", "empty", empty_fix)
        return value
    shape_fix = ("give a string, or a list of {\"role\": ..., \"content\": <string>} messages "
                 "(prompt: the conversation so far; chosen/rejected: the assistant reply)")
    if not isinstance(value, (list, tuple)):
        raise fail(f"expected a string or a message list, got {type(value).__name__}",
                   "wrong_type", shape_fix)
    if not value:
        raise fail("empty message list", "empty", empty_fix)
    messages = []
    for number, message in enumerate(value, 1):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise fail(f"message {number} is not a {{role: str, content: str}} object",
                       "wrong_type", shape_fix)
        if not message["content"].strip():
            raise fail(f"message {number} has empty content", "empty", empty_fix)
        messages.append(dict(message))
    last_role = messages[-1]["role"]
    if field == "prompt" and last_role == "assistant":
        # add_generation_prompt would open a second assistant turn after this one.
        raise fail("the prompt's last message is from the assistant", "wrong_type",
                   "end the prompt with the user turn and move the reply to chosen/rejected")
    if field != "prompt" and last_role != "assistant":
        raise fail(f"the last message has role {last_role!r}, not 'assistant'", "wrong_type",
                   shape_fix)
    return messages


def _canonical(value: Value) -> tuple:
    """A comparable form: a plain string equals the same text as one assistant message."""
    messages = _as_messages(value, "assistant")
    return tuple((m["role"], m["content"].strip()) for m in messages)


def _report_skipped(source: str, rows: list, skipped: Counter,
                    first_error: PreferenceDataError | None) -> None:
    if not skipped:
        return
    counts = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
    if not rows:
        raise PreferenceDataError(
            f"every row is invalid ({counts}); the first: {first_error}", source=source,
            fix="repair the data; skip_invalid only drops some bad rows")
    log.warning("%s: skipped %d invalid rows (%s), kept %d", source, sum(skipped.values()),
                counts, len(rows))


# ---- held-out split ----------------------------------------------------------------------

def split_heldout(rows: Sequence[PreferenceRow], fraction: float, seed: int = 0,
                  ) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """Split rows into (train, heldout), deterministically, never splitting a prompt.

    Rows that share a prompt go to the same side, so held-out accuracy is not inflated by
    pairs whose prompt was trained on. Prompt groups are shuffled with ``seed`` and taken
    into the held-out side until it holds ``round(fraction * len(rows))`` rows (at least
    one); both sides keep source order.

    Args:
        rows: validated rows from `load_preference_rows`.
        fraction: share of rows held out, in (0, 1).
        seed: shuffle seed; the same rows and seed give the same split. Default 0.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.heldout_fraction={fraction} must be in (0, 1)")
    groups: dict[tuple, list[int]] = {}
    for position, row in enumerate(rows):
        groups.setdefault(_canonical(row.prompt), []).append(position)
    keys = sorted(groups)  # sorted first: dict order must not leak into the shuffle
    random.Random(seed).shuffle(keys)
    target = max(1, round(fraction * len(rows)))
    held: set[int] = set()
    for key in keys:
        if len(held) >= target:
            break
        held.update(groups[key])
    if len(held) == len(rows):
        raise ValueError(f"data.heldout_fraction={fraction} leaves no training rows "
                         f"({len(rows)} rows in {len(groups)} prompt groups)")
    train = [row for i, row in enumerate(rows) if i not in held]
    heldout = [row for i, row in enumerate(rows) if i in held]
    return train, heldout


# ---- tokenization ------------------------------------------------------------------------

def tokenize_pair(tokenizer, row: PreferenceRow, max_length: int | None = None,
                  max_prompt_length: int | None = None, truncate_prompt: bool = True,
                  ) -> dict[str, Any]:
    """Token ids of one pair under the chat template and the truncation policy.

    Args:
        tokenizer: a transformers tokenizer (its chat template is used when it has one).
        row: a validated row.
        max_length: budget for prompt + response tokens, or None for no limit.
        max_prompt_length: budget for the prompt alone, or None for no limit.
        truncate_prompt: left-truncate an over-long prompt (True, default) or raise.
    Returns a feature dict: ``index``; ``prompt_ids``; ``chosen_ids`` and ``rejected_ids``
    (response tokens only); ``prompt_len``, ``chosen_len``, ``rejected_len`` (their
    lengths); ``template_fallback`` (True when the response was tokenized on its own).
    """
    prompt_ids = _prompt_ids(tokenizer, row)
    chosen_ids, chosen_fallback = _response_ids(tokenizer, row, prompt_ids, row.chosen)
    rejected_ids, rejected_fallback = _response_ids(tokenizer, row, prompt_ids, row.rejected)
    prompt_ids, room = _fit_prompt(row, prompt_ids, max_length, max_prompt_length,
                                   truncate_prompt)
    if room is not None:
        chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
    return {
        "index": row.index,
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "prompt_len": len(prompt_ids),
        "chosen_len": len(chosen_ids),
        "rejected_len": len(rejected_ids),
        "template_fallback": chosen_fallback or rejected_fallback,
    }


def tokenize_unpaired(tokenizer, row: UnpairedRow, max_length: int | None = None,
                      max_prompt_length: int | None = None, truncate_prompt: bool = True,
                      ) -> dict[str, Any]:
    """Token ids of one unpaired row, under the chat template and truncation policy of
    `tokenize_pair`.

    Returns a feature dict: ``index``; ``label``; ``prompt_ids``; ``completion_ids``;
    ``prompt_len``, ``completion_len``; ``room``, the response tokens ``max_length`` leaves
    after this prompt (None: no limit), which `collate` applies to the mismatched completion
    this prompt is paired with; ``template_fallback``.
    """
    prompt_ids = _prompt_ids(tokenizer, row)
    completion_ids, fallback = _response_ids(tokenizer, row, prompt_ids, row.completion)
    prompt_ids, room = _fit_prompt(row, prompt_ids, max_length, max_prompt_length,
                                   truncate_prompt)
    if room is not None:
        completion_ids = completion_ids[:room]
    return {"index": row.index, "label": bool(row.label), "prompt_ids": prompt_ids,
            "completion_ids": completion_ids, "prompt_len": len(prompt_ids),
            "completion_len": len(completion_ids), "room": room, "template_fallback": fallback}


def _fit_prompt(row, prompt_ids: list[int], max_length: int | None,
                max_prompt_length: int | None, truncate_prompt: bool,
                ) -> tuple[list[int], int | None]:
    """(the prompt under the truncation policy, response tokens left in max_length or None)."""
    def too_long(problem: str, fix: str) -> PreferenceDataError:
        return PreferenceDataError(problem, source=row.source, location=row.location,
                                   field="prompt", reason="prompt_too_long", fix=fix)

    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        if not truncate_prompt:
            raise too_long(f"the prompt has {len(prompt_ids)} tokens, over "
                           f"max_prompt_length={max_prompt_length}",
                           "shorten it, raise data.max_prompt_length, set "
                           "data.truncate_prompt=true or data.skip_invalid=true")
        prompt_ids = prompt_ids[-max_prompt_length:]  # keep the END: the question itself
    if max_length is None:
        return prompt_ids, None
    room = max_length - len(prompt_ids)
    if room < 1:
        raise too_long(f"the prompt has {len(prompt_ids)} tokens, leaving no room for a "
                       f"response in max_length={max_length}",
                       "set data.max_prompt_length below data.max_length, raise "
                       "data.max_length, or set data.skip_invalid=true")
    return prompt_ids, room


def tokenize_rows(tokenizer, rows: Iterable[PreferenceRow | UnpairedRow],
                  max_length: int | None = None,
                  max_prompt_length: int | None = None, truncate_prompt: bool = True,
                  skip_invalid: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """`tokenize_pair` (`tokenize_unpaired` for unpaired rows) over rows, checking every row's
    budget before training starts.

    Args:
        tokenizer, max_length, max_prompt_length, truncate_prompt: as in `tokenize_pair`.
        rows: validated rows.
        skip_invalid: drop rows whose prompt is too long and count them, instead of raising.
            Default False.
    Returns (features, skipped): feature dicts and a Counter of dropped rows per reason.
    """
    features: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    first_error: PreferenceDataError | None = None
    source = "preference rows"
    for row in rows:
        source = row.source
        tokenize = tokenize_unpaired if isinstance(row, UnpairedRow) else tokenize_pair
        try:
            features.append(tokenize(tokenizer, row, max_length, max_prompt_length,
                                     truncate_prompt))
        except PreferenceDataError as err:
            if not skip_invalid or err.reason is None:
                raise
            skipped[err.reason] += 1
            first_error = first_error or err
    if not features and not skipped:
        raise PreferenceDataError("no rows to tokenize", source=source,
                                  fix="check the data source and the held-out split")
    _report_skipped(source, features, skipped, first_error)
    fallbacks = sum(f["template_fallback"] for f in features)
    if fallbacks:
        log.warning("%s: %d of %d rows were tokenized as response text + eos because the "
                    "chat template does not extend the prompt's tokens", source, fallbacks,
                    len(features))
    return features, skipped


def _as_messages(value: Value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _as_text(value: Value) -> str:
    """Response text for the no-template path: a string, or its messages' contents."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def _prompt_ids(tokenizer, row: PreferenceRow) -> list[int]:
    if tokenizer.chat_template is None:
        if not isinstance(row.prompt, str):
            raise PreferenceDataError(
                "chat messages need a tokenizer with a chat template, and this one has none",
                source=row.source, location=row.location, field="prompt", reason="wrong_type",
                fix="use a chat model's tokenizer, or give the prompt as a plain string")
        return list(tokenizer(row.prompt)["input_ids"])  # with the tokenizer's BOS, if any
    text = tokenizer.apply_chat_template(_as_messages(row.prompt, "user"),
                                         add_generation_prompt=True, tokenize=False)
    # The template writes its own special tokens; adding BOS again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_ids(tokenizer, row: PreferenceRow, prompt_ids: list[int], response: Value,
                  ) -> tuple[list[int], bool]:
    """(response token ids, used the text + eos fallback)."""
    if tokenizer.chat_template is not None:
        conversation = _as_messages(row.prompt, "user") + _as_messages(response, "assistant")
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            return _strip_trailing_whitespace(tokenizer, list(full[len(prompt_ids):])), False
    ids = list(tokenizer(_as_text(response), add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids, tokenizer.chat_template is not None


def _strip_trailing_whitespace(tokenizer, ids: list[int]) -> list[int]:
    """Drop whitespace-only tokens after the last non-whitespace one (see module docstring)."""
    end = len(ids)
    while end > 1 and not tokenizer.decode(ids[end - 1:end]).strip():
        end -= 1
    return ids[:end]


# ---- collation ---------------------------------------------------------------------------

def collate(features: Sequence[Mapping[str, Any]], pad_token_id: int,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack B pairs (or B unpaired rows) into one concatenated batch for a single forward pass.

    Pairs: rows 0..B-1 are chosen and rows B..2B-1 rejected, in the same pair order, each
    prompt + response, right-padded with ``pad_token_id``.

    Unpaired rows (features from `tokenize_unpaired`): rows 0..B-1 are (x_i, y_i) and rows
    B..2B-1 the mismatched (x_i, y_{i-1}), the completions rotated by one within the batch
    ((x_0, y_{B-1}) first), as TRL's KTOTrainer builds its KL rows; each mismatched completion
    is cut to its prompt's ``room``. Row i and row B + i share their prompt in both layouts.
    One row (B = 1) is its own mismatched row; KTO's training step refuses that batch size.

    Args:
        features: B feature dicts from `tokenize_pair` (optionally with float
            ``ref_chosen_logps`` / ``ref_rejected_logps`` from a reference cache).
        pad_token_id: the tokenizer's pad id.
        pad_to_multiple_of: round T up to a multiple of this (tensor-core friendly), or None.
    Returns:
        input_ids       (2B, T) long
        attention_mask  (2B, T) long, 1 on prompt and response tokens
        labels          (2B, T) long, input ids on response tokens, -100 elsewhere
        index           (B,)    long, the rows' source positions
        label           (B,)    bool, unpaired rows only: True = desirable
        ref_chosen_logps, ref_rejected_logps  (B,) float32, when every feature has them
    """
    import torch

    if not features:
        raise ValueError("collate needs at least one feature")
    if pad_token_id is None:
        raise ValueError("the tokenizer has no pad token id; set tokenizer.pad_token")
    unpaired = "completion_ids" in features[0]
    if unpaired:
        sequences = [(f["prompt_ids"], f["completion_ids"]) for f in features]
        shifted = [features[i - 1]["completion_ids"] for i in range(len(features))]
        sequences += [(f["prompt_ids"], y if f.get("room") is None else y[:f["room"]])
                      for f, y in zip(features, shifted)]
    else:
        sequences = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
        sequences += [(f["prompt_ids"], f["rejected_ids"]) for f in features]
    width = max(len(prompt) + len(response) for prompt, response in sequences)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, response) in enumerate(sequences):
        start, end = len(prompt), len(prompt) + len(response)
        input_ids[i, :end] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
        attention_mask[i, :end] = 1
        labels[i, start:end] = input_ids[i, start:end]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "index": torch.tensor([f["index"] for f in features], dtype=torch.long)}
    if unpaired:
        batch["label"] = torch.tensor([bool(f["label"]) for f in features], dtype=torch.bool)
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        present = sum(key in f for f in features)
        if present == len(features):
            batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
        elif present:
            raise ValueError(f"{present} of {len(features)} features carry {key}; a batch "
                             f"must have it for every pair or for none")
    return batch


@dataclass(frozen=True)
class PreferenceCollator:
    """`collate` with fixed padding settings, for ``DataLoader(collate_fn=...)``.

    Args:
        pad_token_id: the tokenizer's pad id.
        pad_to_multiple_of: round the sequence length up to a multiple of this, or None.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_token_id, self.pad_to_multiple_of)


# ---- one call for the trainer ------------------------------------------------------------

def build_dataset(tokenizer, source: Any, *, heldout: Any = None, heldout_fraction: float = 0.0,
                  seed: int = 0, columns: Mapping[str, str] | None = None,
                  max_length: int | None = None, max_prompt_length: int | None = None,
                  truncate_prompt: bool = True, skip_invalid: bool = False,
                  split: str = "train", unpaired: bool = False, unpair: bool = False,
                  ) -> tuple[list[dict], list[dict], Counter]:
    """Load, validate, split and tokenize a preference source (and its held-out set).

    Args:
        tokenizer: the policy's tokenizer.
        source: training data, as in `load_preference_rows`.
        heldout: an explicit held-out source (same columns), or None. Default None.
        heldout_fraction: with no ``heldout``, the share of ``source`` held out by
            `split_heldout`; 0 (default) holds nothing out.
        seed: the split's seed. Default 0.
        columns, skip_invalid, split: as in `load_preference_rows`.
        max_length, max_prompt_length, truncate_prompt: as in `tokenize_pair`.
        unpaired: the objective trains on unpaired rows (KTO): sources are read as
            ``prompt``/``completion``/``label`` rows. Default False (pairs).
        unpair: with ``unpaired``, the sources are pair files, split by `unpair_rows`
            (``data.unpair``); ignored for pair objectives. Default False.
    Returns (train_features, heldout_features, skipped): a held-out file's row ``index``
    counts from 0 in that file, so key a reference cache by (split, index).
    """
    if heldout is not None and heldout_fraction:
        raise ValueError("set either data.heldout (a file) or data.heldout_fraction, not both")

    def load(src: Any, key: str) -> tuple[list, Counter]:
        if not unpaired:
            return load_preference_rows(src, columns, skip_invalid, split, key)
        if not unpair:
            return load_unpaired_rows(src, columns, skip_invalid, split, key)
        pairs, dropped = load_preference_rows(src, columns, skip_invalid, split, key)
        return unpair_rows(pairs), dropped

    rows, skipped = load(source, "data.train")
    held_rows: list = []
    if heldout is not None:
        held_rows, held_skipped = load(heldout, "data.heldout")
        skipped += held_skipped
    elif heldout_fraction:
        rows, held_rows = split_heldout(rows, heldout_fraction, seed)
        if unpaired:
            fix = ("give data.heldout a file with both labels, or change "
                   "data.heldout_fraction or seed")
            for side, part in (("training", rows), ("held-out", held_rows)):
                check_both_labels(part, f"{part[0].source} ({side} side of "
                                        f"data.heldout_fraction={heldout_fraction})", fix=fix)
    budget = {"max_length": max_length, "max_prompt_length": max_prompt_length,
              "truncate_prompt": truncate_prompt, "skip_invalid": skip_invalid}
    train, train_skipped = tokenize_rows(tokenizer, rows, **budget)
    held: list[dict] = []
    if held_rows:
        held, held_skipped = tokenize_rows(tokenizer, held_rows, **budget)
        skipped += held_skipped
    return train, held, skipped + train_skipped
