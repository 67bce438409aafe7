"""One rank of a 2-process KTO run; started by tests/test_kto.py via torchrun.

Writes ``<out>/rank<k>.json`` with the world size, each training call's local mean log-ratio
on the mismatched rows and the reference point z0 it trained with, and how many calls came
without an all-reduce (the held-out evaluation, on the main rank only).
Usage: ``kto_dist_worker.py OUT HELDOUT_JSONL``.
"""

import json
import sys
from pathlib import Path

import torch

import pdalign.objectives.losses
from pdalign.training.trainer import train
from tests.conftest import compose, tiny_overrides


def main(out: str, heldout: str) -> None:
    calls, eval_calls = [], [0]
    reference_point = pdalign.objectives.kto.kto_reference_point

    def recording(policy_kl_logps, ref_kl_logps, reduce_mean=None):
        z0 = reference_point(policy_kl_logps, ref_kl_logps, reduce_mean)
        if reduce_mean is None:
            eval_calls[0] += 1
        else:
            calls.append({"local": float((policy_kl_logps - ref_kl_logps).mean()),
                          "z0": float(z0)})
        return z0

    pdalign.objectives.kto.kto_reference_point = recording
    torch.set_num_threads(1)
    cfg = compose(tiny_overrides("method=kto", "data.unpair=true", "train.steps=3",
                                 "train.batch_size=2", "train.lr=5e-2", f"data.heldout={heldout}",
                                 "train.dtype=fp32"))
    summary = train(cfg, Path(out) / "run")
    from accelerate import PartialState

    rank = PartialState().process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"world_size": summary["world_size"], "calls": calls, "eval_calls": eval_calls[0]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
