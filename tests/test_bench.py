"""experiments/bench_step.py end to end on the tiny model: one round, one step, the JSON schema.

The numbers of a tiny run mean nothing; what is checked is that the harness runs each trainer in
its own process, reads their step times, and writes bench.json/bench.md with the documented keys
(and only into the --out it was given).
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "bench_step.py"
RATIOS = {"dpo_time_vs_trl", "orpo_time_vs_trl", "dpo_peak_rss_vs_trl",
          "primal_dual_time_vs_dpo", "dpo_time_vs_floor", "orpo_time_vs_floor"}
SETTINGS = {"model", "n_params", "tokens_per_step", "dtype", "threads", "cpu", "matmul_tflops"}


def _load_bench():
    if "bench_step" not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_step"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_step"]


def test_fixed_rows_are_exactly_seq_len_tokens(tokenizer, tmp_path):
    bench = _load_bench()
    rows = bench.fixed_rows(tokenizer, 6, 120)
    path = bench.write_jsonl(rows, tmp_path / "rows.jsonl")
    assert bench.real_tokens(tokenizer, path) == [240] * 6  # chosen 120 + rejected 120
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_matmul_params_counts_a_tied_head_once_as_matmul():
    """N = non-embedding params + the LM head: for a tied tiny Llama that is every parameter."""
    from pdalign.models import build_tiny

    bench = _load_bench()
    model = build_tiny(100, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                       intermediate_size=32)
    total = sum(p.numel() for p in model.parameters())
    assert bench.matmul_params(model) == total
    untied = build_tiny(100, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                        intermediate_size=32, tie_word_embeddings=False)
    total = sum(p.numel() for p in untied.parameters())
    assert bench.matmul_params(untied) == total - 100 * 16  # the input embedding is no matmul


def test_tiny_run_writes_the_documented_schema(tmp_path):
    out = tmp_path / "out"
    # dpo + trl_dpo keep it short (each trainer is a fresh interpreter); without TRL installed
    # the TRL row is skipped with a note, not a crash.
    cmd = [sys.executable, str(SCRIPT), "--model", "tiny", "--rounds", "1", "--steps", "1",
           "--warmup", "1", "--threads", "1", "--only", "dpo,trl_dpo", "--gemm", "512",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    assert set(data["ratios"]) == RATIOS
    assert set(data["floor_s"]) == {"dpo", "orpo"} and all(v > 0 for v in data["floor_s"].values())
    assert SETTINGS <= set(data["settings"])
    s = data["settings"]
    assert s["model"] == "tiny" and s["tokens_per_step"] == 2 * 4 * 160 and s["threads"] == 1
    assert s["dtype"] in ("float32", "bfloat16") and s["matmul_tflops"] > 0 and s["n_params"] > 0
    assert {"model", "capabilities"} <= set(s["cpu"])
    rows = {r["trainer"]: r for r in data["rows"]}
    dpo = rows["dpo"]
    assert dpo["error"] is None and dpo["s_per_step"] > 0 and dpo["peak_rss_mb"] > 0
    assert math.isclose(dpo["time_vs_floor"], dpo["s_per_step"] / data["floor_s"]["dpo"])
    assert math.isclose(data["ratios"]["dpo_time_vs_floor"], dpo["time_vs_floor"])
    if importlib.util.find_spec("trl") is not None:
        assert rows["trl_dpo"]["error"] is None, rows["trl_dpo"]["error"]
        assert data["ratios"]["dpo_time_vs_trl"] > 0 and data["ratios"]["dpo_peak_rss_vs_trl"] > 0
    else:
        assert "trl_dpo" not in rows and any("TRL" in n for n in data["run"]["notes"])
    assert data["ratios"]["orpo_time_vs_trl"] is None  # not run: null, never a made-up number
    assert set(data["targets"]) == RATIOS
    md = (out / "bench.md").read_text()
    assert s["cpu"]["model"] in md.splitlines()[2]  # the machine is named at the top
    assert "| dpo | fixed |" in md


def test_without_trl_the_trl_rows_are_skipped_with_a_note(tmp_path, monkeypatch):
    import torch

    bench = _load_bench()
    monkeypatch.setattr(bench, "trl_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        data = bench.main(["--model", "tiny", "--only", "trl_dpo,trl_orpo", "--rounds", "1",
                           "--steps", "1", "--threads", "1", "--gemm", "256",
                           "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert data["rows"] == [] and all(v is None for v in data["ratios"].values())
    assert any("TRL is not installed" in n for n in data["run"]["notes"])
    assert json.loads((tmp_path / "bench.json").read_text())["ratios"] == data["ratios"]


def test_tiny_refuses_to_write_the_published_results():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--out",
                           str(ROOT / "experiments" / "results")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "must not write" in proc.stderr


BAD_ARGS = {
    "unknown_trainer": (["--only", "dpo,nope"], "--only: unknown trainer(s) ['nope']; choose from"),
    "zero_steps": (["--steps", "0"], "--rounds, --steps, --threads, --batch must be >= 1"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_fail_before_any_work(tmp_path, case):
    """Exit 1 with the argument named on stderr's last line (not any crash), and nothing
    written: no output dir, no model loaded (the load would log 'loading')."""
    bad, message = BAD_ARGS[case]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--out", str(out),
                           *bad], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_recompute_row_differs_from_dpo_only_by_activation_checkpointing(tmp_path):
    bench = _load_bench()
    base = {"model": "tiny", "qlora": False, "data_path": str(tmp_path / "d.jsonl"),
            "warmup": 1, "steps": 1, "batch": 2, "threads": 1, "precompute": False,
            "work_dir": str(tmp_path)}
    rows = {}
    for name in ("dpo", "dpo_recompute"):
        t = bench.TRAINERS[name]
        rows[name] = bench.overrides({**base, "method": t.method, "extra": list(t.extra)})
    assert rows["dpo_recompute"] == rows["dpo"] + ["train.activation_checkpointing=1"]
    assert bench.compose(rows["dpo_recompute"]).train.activation_checkpointing == 1
    assert bench.compose(rows["dpo"]).train.activation_checkpointing == 0


def test_unshared_rows_differ_only_by_share_prompt(tmp_path):
    bench = _load_bench()
    base = {"model": "tiny", "qlora": False, "data_path": str(tmp_path / "d.jsonl"),
            "warmup": 1, "steps": 1, "batch": 2, "threads": 1, "precompute": False,
            "work_dir": str(tmp_path)}
    for method in ("dpo", "orpo"):
        rows = {}
        for name in (method, f"{method}_unshared"):
            t = bench.TRAINERS[name]
            rows[name] = bench.overrides({**base, "method": t.method, "extra": list(t.extra)})
        assert rows[f"{method}_unshared"] == rows[method] + ["train.share_prompt=false"]
        assert bench.compose(rows[method]).train.share_prompt == "auto"  # shared on CPU
        assert bench.compose(rows[f"{method}_unshared"]).train.share_prompt is False


def test_profile_step_writes_op_tables_for_each_part(tmp_path):
    """experiments/profile_step.py on the tiny model: an op table per part, GEMM rates."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "profile_step.py"),
                           "--model", "tiny", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "profile_step.json").read_text())
    assert set(result["parts"]) == {"orpo", "dpo", "rollout"}
    for part in result["parts"].values():
        shares = [op["share"] for op in part["ops"]]
        assert part["wall_s"] > 0 and 0 < sum(shares) <= 1 + 1e-9
        assert shares == sorted(shares, reverse=True)
    # the DPO part runs the reference forward on top of ORPO's: more matmul calls
    calls = {name: sum(op["calls"] for op in part["ops"] if op["op"] == "aten::mm")
             for name, part in result["parts"].items() if name != "rollout"}
    assert calls["dpo"] > calls["orpo"] > 0
    assert all(v > 0 for v in result["gemm_tflops"].values())
    assert "## rollout" in (tmp_path / "profile_step.md").read_text()


def test_launch_count_gpu_layout_cuts_the_head_kernels(tmp_path):
    """experiments/launch_count.py on the tiny model (2 layers, the real 49152 vocabulary):
    one vocabulary piece launches far fewer kernels than 24 pieces, the unshared decoder fewer
    than the two-pass shared one, DPO more than ORPO (its reference forward), and no layout
    syncs per piece (nonzero only in the row bookkeeping)."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "launch_count.py"),
                           "--model", "tiny", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "launch_count.json").read_text())["rows"]
    ops = {(r["method"], r["head"], r["share_prompt"]): r["ops"] for r in rows}
    assert len(ops) == 10
    for m in ("orpo", "dpo"):
        assert ops[m, "gpu_layout", False] * 5 < ops[m, "cpu_pieces", False]
        assert ops[m, "gpu_layout", False] < ops[m, "gpu_layout", True]
        assert ops[m, "full_logits", False] > 0
    assert ops["dpo", "gpu_layout", False] > ops["orpo", "gpu_layout", False]
    assert max(r["nonzero"] for r in rows) <= 8
    assert "| orpo | full_logits | no |" in (tmp_path / "launch_count.md").read_text()
