"""Preference and unpaired rows: validated from a source's records, one error per bad row naming
the source, the row, the field and the fix; the deterministic held-out split. The whole path
from file to batch is described in `pdalign.data`."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pdalign.data.readers import PreferenceDataError, read_records

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED_FIELDS = ("prompt", "completion", "label")


Value = str | list  # a plain string, or a list of {"role": str, "content": str} dicts


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
    name, records = read_records(source, split, config_key)
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
    report_skipped(name, rows, skipped, first_error)
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
    name, records = read_records(source, split, config_key)
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
    report_skipped(name, rows, skipped, first_error)
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
    messages = as_messages(value, "assistant")
    return tuple((m["role"], m["content"].strip()) for m in messages)


def report_skipped(source: str, rows: list, skipped: Counter,
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


# ---- a value as chat messages or as text (the tokenizer's input) ---------------------------


def as_messages(value: Value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def as_text(value: Value) -> str:
    """Response text for the no-template path: a string, or its messages' contents."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)
