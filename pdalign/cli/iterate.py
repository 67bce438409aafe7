"""``pdalign-iterate``: the Hydra app of iterative on-policy constrained DPO; composes
``conf/iterate.yaml`` and runs `pdalign.iterative.loop.run` (the round table is printed at the end).

Examples:
    pdalign-iterate constraints=[refusal] iterative.rounds=3 hydra.run.dir=outputs/iter
    pdalign-iterate experiment=iterative hydra.run.dir=outputs/iterative
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pdalign.iterative.loop import run
from pdalign.runfiles.atomic import write_text
from pdalign.runfiles.rounds import ROUNDS_MD
from pdalign.training.config import CONF_DIR, check_constraint_names


def main() -> None:
    """Console entry point (``pdalign-iterate``)."""
    check_constraint_names(sys.argv[1:])
    _hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="iterate")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(cfg, run_dir)
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    print((run_dir / ROUNDS_MD).read_text(encoding="utf-8"))
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()
