"""The metrics of a run: the logger (a local ``metrics.jsonl`` always, W&B alongside when
enabled), its reader, and the metric keys that cross modules (one writer, one parser each).

W&B runs in offline mode unless an API key is configured (``WANDB_API_KEY`` or a netrc login),
so a run never blocks on the network; ``wandb sync`` uploads an offline run later. The report
reads ``metrics.jsonl`` only, never the W&B service. Every record carries ``step``, the x-axis
all W&B panels are defined against, so lambda and violation plots line up.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pdalign.runfiles.atomic import write_text


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsLogger:
    """Writes one JSON line per ``log`` call and mirrors it to W&B.

    Args:
        run_dir: directory of the run; ``metrics.jsonl`` and ``wandb/`` land there.
        config: the resolved run config (a plain dict), recorded as the W&B run config.
        use_wandb: False disables W&B entirely.
        project, group, name: W&B project, group (one sweep = one group) and run name.
        enabled: False on non-main ranks: they log nothing.
        resume: True appends to an existing ``metrics.jsonl`` instead of starting it afresh.
        resume_step: the checkpoint step a resumed run continues from. Records past it, which
            the interrupted run logged after its last checkpoint and the resumed run logs
            again, are dropped first, so every step appears once. None keeps every record.
    """

    def __init__(self, run_dir: str | Path, config: dict | None = None, *, use_wandb: bool = True,
                 project: str = "pdalign", group: str | None = None, name: str | None = None,
                 enabled: bool = True, resume: bool = False, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "metrics.jsonl"
        self._file = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and resume_step is not None and self.path.is_file():
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a" if resume else "w", encoding="utf-8")
        if use_wandb:
            import wandb  # heavy, and only when logging.wandb is on

            mode = "online" if _wandb_has_key() else "offline"
            self._wandb = wandb.init(project=project, group=group, name=name, config=config,
                                     dir=str(self.run_dir), mode=mode, reinit="finish_previous",
                                     settings=wandb.Settings(silent=True, console="off"))
            # Every panel uses `step` as its x-axis so lambda, g and violation align.
            self._wandb.define_metric("step")
            self._wandb.define_metric("*", step_metric="step")

    @property
    def wandb_dir(self) -> Path | None:
        return Path(self._wandb.dir).parent if self._wandb is not None else None

    def log(self, record: dict[str, Any]) -> None:
        """Record one line; ``record`` must hold ``step``."""
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(clean)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# Evaluations of a run's checkpoints made after training (``pdalign-eval --record``): records
# like metrics.jsonl's (``step`` + ``eval/...`` keys), kept apart so the training log is never
# rewritten; the report reads them after it (`pdalign.reporting.runs.collect_runs`).
POSTHOC = "posthoc.jsonl"


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Add one JSON record as the last line of ``path`` (created if missing), atomically: the
    old lines and the new one go to a temp file that replaces ``path``."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the records of ``path`` logged after ``last_step`` (and a torn last line);
    returns how many were dropped. The file is replaced atomically."""
    path = Path(path)
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) \
                    and record["step"] > last_step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        write_text(path, "".join(kept))
    return dropped


def split_records(records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(training-step records, held-out evaluation records) of a metrics.jsonl."""
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    train = [r for r in records if "loss" in r]
    return train, evals


SET_ORDER = {"id": 0, "shifted": 1}  # in-distribution before distribution-shifted
_KEY = re.compile(r"^eval/([^/]+)/([^/]+)/(.+)$")


def eval_key(constraint: str, prompt_set: str, field: str) -> str:
    """The metric key of one held-out field, e.g. ``eval/refusal/id/upper``."""
    for part, what in ((constraint, "constraint"), (prompt_set, "prompt set")):
        if not part or "/" in part:
            raise ValueError(f"{what} name {part!r} must be non-empty and contain no '/' (it is "
                             f"part of the metric key eval/<constraint>/<set>/<field>)")
    return f"eval/{constraint}/{prompt_set}/{field}"


def parse_eval_key(key: str) -> tuple[str, str, str] | None:
    """(constraint, prompt set, field) of a held-out key; None for any other key (run-level
    ``eval/pref_accuracy`` included). ``field`` may be ``bound/<name>``."""
    m = _KEY.match(key)
    return (m[1], m[2], m[3]) if m else None


OPENER_ROW = ".opener"  # set-name suffix of an opener constraint's exact-probability rows


def opener_set(prompt_set: str) -> str:
    """The set name of the exact opener-probability row on ``prompt_set`` (``id.opener``), the
    row beside the sampled one (`pdalign.evaluation.heldout.evaluate` writes both)."""
    return prompt_set + OPENER_ROW


def base_set(prompt_set: str) -> str:
    """The prompt set a row was measured on: ``id`` for both ``id`` and ``id.opener``."""
    return prompt_set.removesuffix(OPENER_ROW)


def set_order(pairs) -> list[tuple[str, str]]:
    """(constraint, prompt set) pairs sorted: constraints by name, ``id`` then ``shifted``, each
    sampled row before its ``.opener`` row."""
    def key(p):
        base = base_set(p[1])
        return p[0], SET_ORDER.get(base, 9), base, p[1] != base
    return sorted(set(pairs), key=key)


def signal_key(constraint: str, field: str) -> str:
    """The metric key of one rollout-signal diagnostic, ``signal/<constraint>/<field>``, fields
    ``spread``, ``at_budget``, ``flat_rollouts`` and ``silent_when_flat``
    (`RolloutManager.signal_stats` writes them, pdalign.reporting.stats reads them)."""
    return f"signal/{constraint}/{field}"
