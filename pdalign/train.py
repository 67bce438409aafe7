"""``pdalign-train``: the Hydra app. Composes conf/, builds the parts, runs `trainer.train`.

Examples:
    pdalign-train model=tiny train.steps=20
    pdalign-train method=primal_dual constraints=[refusal,kl_budget]
    pdalign-train --multirun experiment=compare method=dpo,orpo,primal_dual seed=0,1,2
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("pdalign")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from pdalign.trainer import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = train(cfg, run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("run finished: %s", json.dumps(summary))
    print(f"run dir: {run_dir}")
    return float(summary.get("final_loss", 0.0))


if __name__ == "__main__":
    main()
