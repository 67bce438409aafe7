"""One rank of a 2-process primal-dual run; started by tests/test_distributed.py via torchrun.

Writes ``<out>/rank<k>.json`` with the world size and every lambda this rank's DualState took.
Usage: ``dist_worker.py OUT [NAN_STEP]``; with NAN_STEP, rank 1 alone gets a NaN loss at that
step (its NAN_STEP-th objective call: one micro-batch per step here).
"""

import json
import os
import sys
from pathlib import Path

import torch

import pdalign.objectives.losses
import pdalign.training.dual
from pdalign.training.trainer import train
from tests.conftest import compose, tiny_overrides


def main(out: str, nan_step: int | None = None) -> None:
    seen = []
    update = pdalign.training.dual.DualState.update

    def recording(self, g_hat, epsilon):
        lam = update(self, g_hat, epsilon)
        seen.append({"g": [float(x) for x in g_hat], "lambda": lam.tolist()})
        return lam

    pdalign.training.dual.DualState.update = recording
    import accelerate

    local = []
    reduce = accelerate.Accelerator.reduce

    def recording_reduce(self, tensor, reduction="sum", scale=1.0):
        if tensor.numel() > 1:  # this rank's g before the all-reduce (not the finite flag)
            local.append([float(x) for x in tensor])
        return reduce(self, tensor, reduction=reduction, scale=scale)

    accelerate.Accelerator.reduce = recording_reduce
    if nan_step is not None and os.environ["RANK"] == "1":  # torchrun's rank of this process  # this rank alone gets a NaN loss at nan_step
        call = pdalign.objectives.preference.DPO.__call__
        calls = []

        def nan_once(self, *args, **kwargs):
            losses, metrics = call(self, *args, **kwargs)
            calls.append(1)
            return (losses * float("nan") if len(calls) == nan_step else losses), metrics

        pdalign.objectives.preference.DPO.__call__ = nan_once
    torch.set_num_threads(1)
    cfg = compose(tiny_overrides(
        "method=primal_dual", "constraints=[refusal,kl_budget,length]", "train.steps=4",
        "train.batch_size=2", "train.rollout_every=2", "train.rollout.prompts_per_rollout=2",
        "train.rollout.max_new_tokens=6", "constraints.length.epsilon=1", "dual.lr=0.1",
        # the stop estimator's per-position stop log-probs come from the shared DDP forward
        "constraints.length.estimator=stop"))
    summary = train(cfg, Path(out) / "run")
    from accelerate import PartialState

    rank = PartialState().process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"world_size": summary["world_size"], "updates": seen, "local_g": local,
         "lambda": summary["lambda"]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
