"""Run provenance: what exactly produced a run, written as ``manifest.json`` in its directory.

Records the resolved config, the sha256 of every data and prompt file the run read, the git
commit of the source tree (when it is a checkout), package versions, the seed, the precision
chosen and the hardware. ``pdalign-report`` groups runs by their data hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pdalign.data.readers import source_file
from pdalign.evaluation.heldout import heldout_prompt_sets
from pdalign.policy.precision import cpu_flags
from pdalign.runfiles.atomic import write_text

PACKAGES = ("pdalign", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets",
            "hydra-core", "wandb", "detoxify", "alt-profanity-check", "trl")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(start: Path | None = None) -> str | None:
    """The HEAD commit of the checkout holding pdalign (``+dirty`` if it has changes)."""
    root = start or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def cpu_info() -> dict[str, Any]:
    """CPU model name and the capabilities that decide the dtype rule."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor() or "unknown")
    flags = cpu_flags()
    caps = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {"model": name, "capabilities": caps, "logical_cpus": os.cpu_count()}


def hardware() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_info(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_files(cfg, constraints) -> list[Path]:
    """The files a run reads, the same for every method of a sweep: the training and held-out
    data, and each listed constraint's training and held-out prompt sets."""
    files = [source_file(cfg.data.train), source_file(cfg.data.get("heldout"))]
    sets = cfg.eval.get("sets") or {}
    for c in constraints:
        if (prompts := c.judged_prompts()) is not None:
            files.append(prompts)
            files += [p for p, _ in heldout_prompt_sets(c, sets.get(c.name)).values()]
    return [f for f in files if f is not None]


def write_manifest(run_dir: str | Path, config: dict, files: list[str | Path], *,
                   seed: int, dtype: str, world_size: int) -> Path:
    """Write ``run_dir/manifest.json`` atomically and return its path.

    Args:
        config: the resolved run config as a plain dict.
        files: every data and prompt file the run reads (hashed with sha256).
        seed, dtype, world_size: the run's seed, chosen precision and number of processes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": config,
        "data_hashes": {str(Path(f).resolve()): sha256_file(f) for f in sorted(set(map(str, files)))},
        "git_commit": git_commit(),
        "versions": versions(),
        "seed": seed,
        "dtype": dtype,
        "world_size": world_size,
        "hardware": hardware(),
    }
    write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
    return run_dir / "manifest.json"
