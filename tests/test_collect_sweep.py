"""experiments/collect_sweep.py: a sweep's small files copied into results, reported there."""

import importlib.util
import json
from pathlib import Path

from tests.test_report import build_sweep, make_run

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("collect_sweep",
                                              ROOT / "experiments" / "collect_sweep.py")
collect_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collect_sweep)


def test_copies_small_files_only_and_reports(tmp_path):
    sweep = build_sweep(tmp_path / "sweep")
    run = sweep / "method=dpo,seed=0"
    (run / "checkpoints" / "step-20").mkdir(parents=True)
    (run / "checkpoints" / "step-20" / "adapter.safetensors").write_bytes(b"x" * 100)
    (run / "wandb").mkdir()
    (run / "train.log").write_text("data: 3 train pairs, 1 held-out, skipped none\n")
    other = make_run(tmp_path / "elsewhere", "method=primal_dual,seed=5", method="primal_dual",
                     objective="dpo", seed=5, pref=0.5, refusal=[0.3] * 3, kl=[0.04] * 3,
                     wall=10.0, lam={"refusal": lambda t: 0.0, "kl_budget": lambda t: 0.0})
    dest = tmp_path / "results" / "compare"
    dest.mkdir(parents=True)
    (dest / "base_eval.json").write_text(json.dumps({"metrics": {}}))
    (dest / "stale.txt").write_text("from an older collect")

    runs = collect_sweep.collect(sweep, dest, extra=[other], keep=["base_eval.json"])

    assert len(runs) == 7  # 6 in the sweep (one crashed) + the extra one
    copied = dest / "method=dpo,seed=0"
    assert sorted(p.name for p in copied.iterdir()) == [
        "config.yaml", "manifest.json", "metrics.jsonl", "summary.json", "train.log"]
    assert (copied / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert (dest / "base_eval.json").is_file() and not (dest / "stale.txt").exists()
    md = (dest / "report.md").read_text()
    assert "| primal_dual(dpo) | dpo | kl_budget/id |" in md
    assert (dest / "paired.csv").is_file() and (dest / "lambda.png").is_file()
    assert not list(dest.parent.glob("compare.*"))  # no .tmp / .old left behind
