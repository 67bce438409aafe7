"""A fixed-seed tiny run computes what it computed before a change: the losses, the multipliers,
the constraint estimates and the held-out metrics of a DPO run and of a primal-dual run with the
batch, opener and pair kinds, against values recorded by the code of an earlier commit
(``fixtures/tiny_runs.json``, its ``recorded_at``).

The runs pin fp32 (algebra: the same numbers through the same steps) and take no samples during
training; of the held-out metrics only the deterministic ones are compared (preference, KL, and
the opener constraint's exact ``.opener`` rows, teacher-forced), so the values are the same on every CPU kind up to float rounding (rel 1e-4, the
conftest's fp32 tolerance); a sampled rollout would turn a last-bit difference into another
token. Refactors and speed-ups must leave them unchanged; a change that means to change them
re-records the file (``python tests/test_fixed_seed.py --record``) and says why in its commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script to record
    sys.path.insert(0, str(ROOT))

from tests.conftest import FIXTURES, FP32, assert_tree_close, compose, rel_tol, tiny_overrides  # noqa: E402

REFERENCE = FIXTURES / "tiny_runs.json"
RUNS = {
    "dpo": ["method=dpo"],
    "primal_dual": ["method=primal_dual",
                    "constraints=[kl_budget,refusal_openers,over_refusal_openers,over_refusal_pairs]", "dual.lr=2"],
}
COMMON = ["train.steps=4", "eval.every=2", "seed=3", f"data.heldout={FIXTURES / 'pairs.jsonl'}",
          FP32]
TRAIN_KEYS = ("loss", "loss/", "lambda", "g/", "rewards/", "logps/", "stat/")
EVAL_KEYS = ("eval/pref_accuracy", "eval/reward_margin", "eval/n_pairs", "eval/kl_budget/",
             "eval/refusal_openers/id.opener/", "eval/over_refusal_openers/id.opener/",
             "eval/over_refusal_openers/shifted.opener/")


def run_all(out: Path, *extra: str) -> dict:
    """{run: {"train": [record per step], "eval": [record per evaluation]}}, the deterministic
    keys only (timings and sampled held-out rates left out); ``extra`` overrides every run."""
    from pdalign.runfiles.metrics import read_metrics, split_records
    from pdalign.training.trainer import train

    result = {}
    for name, overrides in RUNS.items():
        train(compose(tiny_overrides(*overrides, *COMMON, *extra)), out / name)
        rows, evals = split_records(read_metrics(out / name / "metrics.jsonl"))
        result[name] = {
            "train": [{k: v for k, v in r.items() if k == "step" or k.startswith(TRAIN_KEYS)}
                      for r in rows],
            "eval": [{k: v for k, v in r.items() if k == "step" or k.startswith(EVAL_KEYS)}
                     for r in evals]}
    return result


def test_fixed_seed_tiny_runs_match_the_recorded_values(tmp_path):
    recorded = json.loads(REFERENCE.read_text())
    got = run_all(tmp_path)
    assert_tree_close(got, recorded["runs"], rel=rel_tol(torch.float32), abs=1e-6)
    pd = got["primal_dual"]["train"]
    assert pd[-1]["lambda_next/refusal_openers"] > 0  # the multipliers moved: not a trivial run
    assert got["dpo"]["eval"][-1]["eval/pref_accuracy"] > 0


def test_packed_preference_rows_give_the_recorded_values(tmp_path, monkeypatch):
    """train.pack_pairs=true: the [chosen ; rejected] rows go through the token trie, and both
    runs still match the values recorded on the shared-prompt path."""
    import pdalign.policy.logprobs as logprobs

    original, packed_rows = logprobs._packed_states, []

    def recording(model, input_ids, attention_mask, labels):
        out = original(model, input_ids, attention_mask, labels)
        if out is not None and model.training:
            packed_rows.append(int(input_ids.shape[0]))
        return out

    monkeypatch.setattr(logprobs, "_packed_states", recording)
    got = run_all(tmp_path, "train.pack_pairs=true")
    assert_tree_close(got, json.loads(REFERENCE.read_text())["runs"], rel=rel_tol(torch.float32),
                      abs=1e-6)
    batch = compose(tiny_overrides(*COMMON)).train.batch_size
    # the DPO run's 4 steps, each one packed forward of its 2 x batch preference rows (the
    # primal-dual run adds its own, and its opener and pair rows)
    assert packed_rows.count(2 * batch) >= 2 * 4, packed_rows


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_fixed_seed.py --record")
    import tempfile

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(Path(tmp))
    REFERENCE.write_text(json.dumps({"recorded_at": commit, "runs": runs}, indent=1,
                                    sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
