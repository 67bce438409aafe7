"""Two real CPU ranks (torchrun + gloo): lambda is bit-identical on both after several steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _two_ranks(out: Path, *args: str, port: int) -> list[dict]:
    """Run tests/dist_worker.py on two torchrun ranks; each rank's JSON."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port),
         str(ROOT / "tests" / "dist_worker.py"), str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]


def test_lambda_identical_on_two_ranks(tmp_path):
    ranks = _two_ranks(tmp_path, port=29517)
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2  # two processes, truly
    a, b = ranks[0]["updates"], ranks[1]["updates"]
    assert len(a) == len(b) == 4
    # Each rank samples its own rollouts, so its local g differs; after the mean all-reduce
    # the dual step sees the same g and lambda is bit-identical.
    assert a == b
    assert ranks[0]["local_g"] != ranks[1]["local_g"]  # so the agreement is the all-reduce's
    for k, update in enumerate(a):  # and the dual step used the mean of the two local g
        mean = [(x + y) / 2 for x, y in zip(ranks[0]["local_g"][k], ranks[1]["local_g"][k])]
        assert update["g"] == pytest.approx(mean, rel=1e-6)
    assert ranks[0]["lambda"] == ranks[1]["lambda"]
    assert a[-1]["lambda"][2] > 0  # the length bound of 1 token is violated: lambda moved



def test_a_nan_on_one_rank_skips_the_step_on_both(tmp_path):
    """Rank 1 alone gets a NaN loss at step 2. Both ranks must skip that step (no backward, no
    dual update) and go on in lockstep: had rank 1 skipped alone, rank 0 would wait in DDP's
    gradient all-reduce for a backward that never comes."""
    from pdalign.logging import read_metrics

    ranks = _two_ranks(tmp_path, "2", port=29518)
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    a, b = ranks[0]["updates"], ranks[1]["updates"]
    assert len(a) == len(b) == 3  # steps 1, 3, 4: step 2 had no dual update on either rank
    assert a == b and ranks[0]["lambda"] == ranks[1]["lambda"]
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if "loss" in r or "skipped_nonfinite" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1] == {"step": 2, "skipped_nonfinite": 1}
    assert records[2]["lambda/length"] == records[0]["lambda_next/length"] > 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
