"""The runs of a sweep: found under its directory (a ``metrics.jsonl`` each), read once (records,
resolved config, summary, manifest) and labelled by method and by what else tells them apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from omegaconf import OmegaConf

from pdalign.runfiles.metrics import POSTHOC, read_metrics

# Runs sit one level under a Hydra sweep dir, two under its parent, but the sweep subdir is
# ${hydra.job.override_dirname}: an override holding a path (data.train=/a/b.jsonl) nests the
# run as deep as that path. Search deep; a run dir is never descended into.
MAX_DEPTH = 8


#                  typical, but a PID controller can hover just below it)
# Config keys that may differ between seeds of one method without making them different
# experiments: bookkeeping, and settings that change speed or memory but not the math
# (activation checkpointing recomputes the same values). Any other difference splits a label,
# e.g. "primal_dual(dpo) [dual.lr=0.1]".
NON_DEFINING_KEYS = ("seed", "logging.", "hydra.", "train.resume", "train.threads",
                     "train.ref_cache_dir", "train.activation_checkpointing",
                     "train.share_prompt", "train.pack_pairs")


_NO_RUNS = "no runs found under {root}: expected subdirectories with metrics.jsonl (a Hydra " \
           "multirun dir)"


class NoRunsError(ValueError):
    """The directory holds no run (no ``metrics.jsonl`` below it)."""


@dataclass
class Run:
    """One run of a sweep, as read from its directory.

    Args:
        path: the run directory.
        name: its path relative to the sweep dir (``"."`` when the sweep dir is the run).
        config: the resolved config as a plain dict ({} when unreadable).
        records: every decodable line of ``metrics.jsonl``, in file order.
        summary: ``summary.json``, or None when the run did not finish.
        manifest: ``manifest.json``, or None when absent.
        label: the method label the run is reported under (set by `collect_runs`).
    """

    path: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    manifest: dict[str, Any] | None
    label: str = ""

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None

    @property
    def data_hashes(self) -> frozenset | None:
        # Keyed by file name, not path: the same files in another checkout (a sweep resumed
        # from a different clone, results copied between machines) are the same data.
        hashes = (self.manifest or {}).get("data_hashes")
        if not isinstance(hashes, dict) or not hashes:
            return None
        return frozenset((Path(path).name, digest) for path, digest in hashes.items())

    @cached_property
    def key_set(self) -> frozenset[str]:
        """Every metric key logged by this run."""
        return frozenset(k for r in self.records for k in r)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, sorted by step, float64 ``(T,)`` each.

        A step logged twice (a resumed run re-logs the steps after its checkpoint) keeps the
        later line, which is the one the finished run's state descends from.
        """
        by_step: dict[int, float] = {}
        for r in self.records:
            value, step = r.get(key), r.get("step")
            if isinstance(value, (int, float)) and isinstance(step, (int, float)):
                by_step[int(step)] = float(value)
        steps = np.array(sorted(by_step), dtype=np.float64)
        return steps, np.array([by_step[int(s)] for s in steps], dtype=np.float64)

    def final(self, key: str) -> float | None:
        """The value of ``key`` at its last logged step, or None if never logged."""
        _, values = self.series(key)
        return float(values[-1]) if values.size else None

    def lambda_max(self, constraint: str) -> float | None:
        """λ cap of one constraint: its own ``lambda_max`` if set, else ``dual.lambda_max``."""
        own = ((self.config.get("constraints") or {}).get(constraint) or {}).get("lambda_max")
        cap = own if own is not None else (self.config.get("dual") or {}).get("lambda_max")
        return float(cap) if cap is not None else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or torn by a crash: treated alike
    return value if isinstance(value, dict) else None


def _read_config(run_dir: Path) -> dict[str, Any]:

    # config.yaml is the resolved copy train.py writes; Hydra's own .hydra/config.yaml is the
    # fallback for runs started some other way (it may hold ${now:...}, hence resolve=False).
    for path, resolve in ((run_dir / "config.yaml", True), (run_dir / ".hydra" / "config.yaml",
                                                              False)):
        if path.is_file():
            try:
                return OmegaConf.to_container(OmegaConf.load(path), resolve=resolve)
            except Exception:  # a half-written or hand-edited YAML must not sink the report
                continue
    return {}


def method_label(config: dict[str, Any]) -> str:
    """``method.name``, with the base objective for the primal-dual wrapper.

    Args:
        config: a run's resolved config as a dict.
    """
    method = config.get("method") or {}
    name = method.get("name") or "unknown"
    if name == "primal_dual":
        return f"primal_dual({method.get('objective') or '?'})"
    return str(name)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys → scalar values (lists as JSON text); a ``constraints`` pseudo-leaf
    names the constraints the run has."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, (list, dict)) else value
    if not prefix:
        flat["constraints"] = ",".join(sorted(config.get("constraints") or {})) or "none"
    return flat


def _split_labels(runs: list[Run]) -> None:
    """Give runs of one label that differ beyond the seed distinct labels, in place."""
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    for label, group in by_label.items():
        flats = [_flatten(r.config) for r in group]
        keys = sorted({k for f in flats for k in f})
        common = set.intersection(*(set(r.config.get("constraints") or {}) for r in group))

        def defining(key: str) -> bool:
            if key.startswith(NON_DEFINING_KEYS):
                return False
            # Settings of a constraint some runs lack are covered by the `constraints` leaf.
            parts = key.split(".")
            return not (parts[0] == "constraints" and len(parts) > 2 and parts[1] not in common)

        missing = object()
        differing = [k for k in keys
                     if defining(k) and len({repr(f.get(k, missing)) for f in flats}) > 1]
        for run, flat in zip(group, flats):
            if differing:
                shown = ", ".join(f"{k}={flat.get(k, '-')}" for k in differing)
                run.label = f"{label} [{shown}]"


def collect_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Run]:
    """Every run under a Hydra multirun dir, sorted by path, with its method label.

    Runs are the directories at depth ≤ ``max_depth`` (the root itself included) holding
    ``metrics.jsonl``; hidden dirs, ``wandb/`` and a run's subdirs are not searched.
    Undecodable lines (a crash tears the last one) are skipped. A run's ``posthoc.jsonl``
    (checkpoints evaluated after training, ``pdalign-eval --record``) adds its records after
    the log's, so a step evaluated both ways reports the later evaluation.

    Args:
        root: the multirun directory (Hydra's ``hydra.sweep.dir``) or its parent.
        max_depth: how many directory levels below ``root`` to search. Default 8.

    Raises:
        NoRunsError: no run was found.
    """
    root = Path(root)
    found: list[Path] = []
    frontier = [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        runs_here = [d for d in frontier if (d / "metrics.jsonl").is_file()]
        found += runs_here
        frontier = [c for d in frontier if d not in runs_here for c in sorted(d.iterdir())
                    if c.is_dir() and not c.name.startswith(".") and c.name != "wandb"]
    if not found:
        raise NoRunsError(_NO_RUNS.format(root=root))
    runs = []
    for d in sorted(found):
        config = _read_config(d)
        records = [r for r in read_metrics(d / "metrics.jsonl") if isinstance(r, dict)]
        if (d / POSTHOC).is_file():  # checkpoints evaluated after training: read after the log
            records += [r for r in read_metrics(d / POSTHOC) if isinstance(r, dict)]
        runs.append(Run(path=d, name=str(d.relative_to(root)), config=config, records=records,
                        summary=_read_json(d / "summary.json"),
                        manifest=_read_json(d / "manifest.json"), label=method_label(config)))
    _split_labels(runs)
    return runs


def data_letters(runs: Iterable[Run]) -> dict[frozenset, str]:
    """A letter per distinct set of data hashes, in order of first appearance."""
    letters: dict[frozenset, str] = {}
    for run in runs:
        if run.data_hashes is not None and run.data_hashes not in letters:
            letters[run.data_hashes] = chr(ord("A") + len(letters) % 26) + (
                str(len(letters) // 26) if len(letters) >= 26 else "")
    return letters
