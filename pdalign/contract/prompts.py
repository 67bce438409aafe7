"""Prompt and pair sets: a bundled set name or a user file, resolved to a path and read, with one
error naming the config key when it cannot be."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path


def bundled_prompts_dir() -> Path:
    """The prompt sets shipped in the wheel (``constraints/prompts`` in the source tree)."""
    return Path(str(resources.files("pdalign.constraints").joinpath("prompts")))


def bundled_prompt_sets() -> list[str]:
    return sorted(p.stem for p in bundled_prompts_dir().glob("*.jsonl"))


def resolve_prompts(source: str | Path, field_name: str = "prompts") -> Path:
    """Path of a prompt set: an existing file, else a bundled set name (``adversarial``).

    Raises FileNotFoundError naming ``field_name``, the paths tried and the bundled sets.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    bundled = bundled_prompts_dir() / (path.name if path.suffix else f"{path.name}.jsonl")
    if len(path.parts) == 1 and bundled.is_file():
        return bundled
    raise FileNotFoundError(
        f"{field_name}={str(source)!r}: no such file (tried {path.resolve()} and {bundled}). "
        f"Give a JSONL file with a 'prompt' field, a CSV file with a 'prompt' column, or a "
        f"bundled set: {', '.join(bundled_prompt_sets())}."
    )


def load_prompts(source: str | Path, field_name: str = "prompts") -> list[str]:
    """Prompts from a bundled set name or a user JSONL (``prompt`` field) / CSV (``prompt`` column).

    Args:
        source: a path, or the name of a bundled set (see `bundled_prompt_sets`).
        field_name: the config key named in error messages, e.g. ``constraints.refusal.prompts``.
    """
    path = resolve_prompts(source, field_name)
    where = f"{field_name}={str(source)!r} ({path})"
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{where}: the CSV has no 'prompt' column "
                                 f"(columns: {reader.fieldnames})")
            rows = [(i + 2, row["prompt"]) for i, row in enumerate(reader)]
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: line {lineno} is not JSON ({err.msg})") from err
            if not isinstance(record, dict) or "prompt" not in record:
                raise ValueError(f"{where}: line {lineno} has no 'prompt' field")
            rows.append((lineno, record["prompt"]))
    else:
        raise ValueError(f"{where}: expected a .jsonl or .csv file")
    for lineno, prompt in rows:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: line {lineno} has an empty or non-text prompt")
    if not rows:
        raise ValueError(f"{where}: the file has no prompts")
    return [prompt for _, prompt in rows]


def bundled_pairs_dir() -> Path:
    """The constraint pair sets shipped in the wheel (``constraints/pairs`` in the source)."""
    return Path(str(resources.files("pdalign.constraints").joinpath("pairs")))


def resolve_pairs(source: str | Path, field_name: str = "pairs") -> Path:
    """Path of a pair set: an existing file, else a bundled set name (``refusal_pairs``)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    bundled = bundled_pairs_dir() / (path.name if path.suffix else f"{path.name}.jsonl")
    if len(path.parts) == 1 and bundled.is_file():
        return bundled
    shipped = sorted(p.stem for p in bundled_pairs_dir().glob("*.jsonl"))
    raise FileNotFoundError(
        f"{field_name}={str(source)!r}: no such file (tried {path.resolve()} and {bundled}). "
        f"Give a JSONL/JSON/Parquet file with prompt, chosen (the wanted answer) and rejected "
        f"(the bounded one), or a bundled set: {', '.join(shipped)}.")
