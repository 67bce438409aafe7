"""Two real CPU ranks (torchrun + gloo): lambda is bit-identical on both after several steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_lambda_identical_on_two_ranks(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517",
         str(ROOT / "tests" / "dist_worker.py"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
