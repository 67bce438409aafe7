# Run: .venv/bin/python experiments/iterative_over_refusal.py RUN_DIR OUT.json
"""Over-refusal of an iterative run's final policy against its starting model.

`pdalign-iterate experiment=iterative` prices only the refusal constraint on adversarial
prompts, so its round evaluations say nothing about benign prompts. This evaluates the start
model and the last round's merged policy (RUN_DIR/round-K/policy) on the first 20 prompts of
the bundled benign_heldout set (over_refusal constraint: cost 1 = refused; the run's sampling
settings: 32 new tokens, temperature 1, eval seed 0) and writes both rows of held-out metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.iterative.loop import CONF_DIR
from pdalign.runfiles.rounds import read_rounds, round_dir
from pdalign.training import build


def main(run_dir: Path, out: Path) -> None:
    last = round_dir(run_dir, len(read_rounds(run_dir)) - 1) / "policy"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="iterate", overrides=[
            "constraints=[over_refusal]", "eval.prompts_per_set=20", "eval.max_new_tokens=32",
            "eval.batch_size=20"])
    result = {}
    for name, path in (("start", cfg.model.name_or_path), (str(last.parent.name), str(last))):
        cfg.model.name_or_path = path
        policy = build.load_base_policy(cfg, torch.device("cpu"))
        metrics = evaluate(policy.model, policy.tokenizer, build.build_constraints(cfg),
                           dtype=policy.dtype, device=policy.device, progress=False,
                           **eval_kwargs(cfg.eval))
        result[name] = {k: v for k, v in metrics.items() if k.startswith("eval/over_refusal/")}
        print(name, result[name]["eval/over_refusal/id/value"], flush=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
