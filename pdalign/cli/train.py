"""``pdalign-train``: the Hydra app. Composes conf/, builds the parts, runs `trainer.train`.

Examples:
    pdalign-train model=tiny train.steps=20
    pdalign-train method=primal_dual constraints=[refusal,kl_budget]
    pdalign-train --multirun experiment=compare method=dpo,orpo,primal_dual seed=0,1,2
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from pdalign.runfiles.atomic import write_text
from pdalign.training.config import CONF_DIR, check_constraint_names
from pdalign.training.trainer import train

log = logging.getLogger("pdalign")


def main() -> None:
    """Console entry point (``pdalign-train``)."""
    check_constraint_names(sys.argv[1:])
    _hydra_main()


def _finished_summary(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The summary of a run that already finished all ``train.steps``, when resuming with
    ``auto``; None otherwise (then the run trains, from its newest checkpoint if any)."""
    if cfg.train.get("resume") != "auto" or not (run_dir / "summary.json").is_file():
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except ValueError:
        return None
    return summary if summary.get("steps") == int(cfg.train.steps) else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.logging.group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        with open_dict(cfg):  # one sweep = one W&B group
            cfg.logging.group = Path(hydra_cfg.sweep.dir).name
    finished = _finished_summary(cfg, run_dir)
    if finished is not None:  # re-running a sweep with train.resume=auto skips its done runs
        log.info("run already finished (%s); train.resume=auto leaves it as it is",
                 run_dir / "summary.json")
        print(f"run dir: {run_dir}")
        return float("nan")
    # under torchrun every rank runs this; the run's files are written once, by rank 0
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    summary = train(cfg, run_dir)
    if main_rank:
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.info("run finished: %s", json.dumps(summary))
    print(f"run dir: {run_dir}")
    # None when no step ran (train.steps=0, or resuming a finished run); sweepers get NaN
    final = summary.get("final_loss")
    return float("nan") if final is None else float(final)


if __name__ == "__main__":
    main()
