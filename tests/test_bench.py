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
TARGETED = {"dpo_time_vs_trl", "orpo_time_vs_trl", "dpo_peak_rss_vs_trl",
            "primal_dual_time_vs_dpo", "dpo_time_vs_floor", "orpo_time_vs_floor"}
RATIOS = TARGETED | {"primal_dual_pairs_time_vs_dpo", "primal_dual_openers_time_vs_dpo"}
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
    from pdalign.policy.models import build_tiny

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
    kinds = json.loads((out / "bench.json").read_text())
    (kind,) = kinds  # one machine kind measured: {kind: results}
    data = kinds[kind]
    assert set(data["ratios"]) == RATIOS
    assert set(data["floor_s"]) == {"dpo", "orpo"} and all(v > 0 for v in data["floor_s"].values())
    assert SETTINGS <= set(data["settings"])
    s = data["settings"]
    assert s["model"] == "tiny" and s["tokens_per_step"] == 2 * 4 * 160 and s["threads"] == 1
    assert s["dtype"] in ("float32", "bfloat16") and s["matmul_tflops"] > 0 and s["n_params"] > 0
    assert {"model", "capabilities", "kind"} <= set(s["cpu"])
    assert kind == s["cpu"]["kind"] in ("avx2", "avx512_bf16", "amx")
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
    assert set(data["targets"]) == TARGETED
    md = (out / "bench.md").read_text()
    section = _load_bench().split_sections(md)[kind]
    # the kind's section names the machine in its heading and holds the rows
    assert section.splitlines()[1] == f"## {kind}: {s['cpu']['model']}"
    assert "| dpo | fixed |" in section


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
    kind = data["settings"]["cpu"]["kind"]
    assert json.loads((tmp_path / "bench.json").read_text())[kind]["ratios"] == data["ratios"]


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


@pytest.mark.parametrize("on, extra, key, on_value, off_value", [
    ("dpo", "train.share_prompt=false", "share_prompt", "auto", False),  # auto = shared on CPU
    ("orpo", "train.share_prompt=false", "share_prompt", "auto", False),
    ("dpo", "train.hold_frozen_in_dtype=false", "hold_frozen_in_dtype", True, False),
    ("primal_dual_openers", "train.hold_frozen_in_dtype=false", "hold_frozen_in_dtype", True,
     False),
    ("dpo", "train.pack_pairs=true", "pack_pairs", False, True),  # here "off" = packed
    ("orpo", "train.pack_pairs=true", "pack_pairs", False, True),
])
def test_a_lever_off_row_differs_from_its_row_only_by_the_lever(tmp_path, on, extra, key,
                                                                 on_value, off_value):
    bench = _load_bench()
    off = {"train.share_prompt=false": f"{on}_unshared",
           "train.pack_pairs=true": f"{on}_packed"}.get(extra, f"{on}_cast_each_use")
    base = {"model": "tiny", "qlora": False, "data_path": str(tmp_path / "d.jsonl"),
            "warmup": 1, "steps": 1, "batch": 2, "threads": 1, "precompute": False,
            "work_dir": str(tmp_path)}
    rows = {}
    for name in (on, off):
        t = bench.TRAINERS[name]
        rows[name] = bench.overrides({**base, "method": t.method, "extra": list(t.extra),
                                      "constraints": list(t.constraints)})
    assert rows[off] == rows[on] + [extra]
    assert bench.compose(rows[on]).train[key] == on_value
    assert bench.compose(rows[off]).train[key] is off_value


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---- machine kinds, per-kind sections (issue 20) ----------------------------------------------

@pytest.mark.parametrize("flags, kind", [
    ("fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "amx"),
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", "avx512_bf16"),
    ("fpu avx2 avx512f avx512bw amx_tile", "avx2"),  # AMX tiles without bf16 units: not amx
    ("fpu sse4_2 avx avx2 fma", "avx2"),
    ("", "avx2"),
])
def test_cpu_kind_from_a_flags_line(flags, kind):
    bench = _load_bench()
    assert bench.cpu_kind(flags) == kind
    assert bench.cpu_kind(flags.split()) == kind  # a collection of flags reads the same
    assert bench.detect_cpu_kind() in bench.CPU_KINDS


def _quick_run(bench, out, monkeypatch, kind: str, gemm: int = 256) -> dict:
    """A full bench_step.main on the tiny model whose only trainer (TRL's) is skipped: every
    file it writes, no child process; the CPU kind as given."""
    import torch

    monkeypatch.setattr(bench, "trl_available", lambda: False)
    monkeypatch.setattr(bench, "detect_cpu_kind", lambda: kind)
    threads = torch.get_num_threads()
    try:
        return bench.main(["--model", "tiny", "--only", "trl_dpo", "--rounds", "1", "--steps",
                           "1", "--threads", "1", "--gemm", str(gemm), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)


def test_a_run_replaces_only_its_own_kinds_section(tmp_path, monkeypatch):
    """avx2, then amx, then avx2 again with another GEMM size: the amx section of bench.md and
    its bench.json entry come through the second avx2 run byte for byte; avx2's are replaced."""
    bench = _load_bench()
    _quick_run(bench, tmp_path, monkeypatch, "avx2", gemm=256)
    _quick_run(bench, tmp_path, monkeypatch, "amx", gemm=256)
    before_md = bench.split_sections((tmp_path / "bench.md").read_text())
    before_json = json.loads((tmp_path / "bench.json").read_text())
    assert list(before_md) == ["avx2", "amx"] and set(before_json) == {"avx2", "amx"}

    _quick_run(bench, tmp_path, monkeypatch, "avx2", gemm=128)
    text = (tmp_path / "bench.md").read_text()
    after_md, after_json = bench.split_sections(text), json.loads((tmp_path / "bench.json")
                                                                  .read_text())
    assert list(after_md) == ["avx2", "amx"]
    assert after_md["amx"] == before_md["amx"] and text.count(before_md["amx"]) == 1
    assert after_json["amx"] == before_json["amx"]
    assert after_json["avx2"]["floor"]["gemm_size"] == 128
    assert "128² GEMM" in after_md["avx2"] and "256² GEMM" in before_md["avx2"]
    assert text.count("# Step benchmark") == 1  # one head, not one per run


def test_the_older_single_run_files_read_as_the_avx2_section(tmp_path, monkeypatch):
    """bench.json of the first format (one run at the top level, measured on the AVX2 EPYC) is
    that CPU kind's entry; bench.md without markers is rebuilt from it when another kind
    writes, so the published numbers are kept."""
    bench = _load_bench()
    old = bench.read_kinds(ROOT / "experiments" / "results" / "bench.json")["avx2"]
    (tmp_path / "bench.json").write_text(json.dumps(old))  # the flat, older format
    (tmp_path / "bench.md").write_text("# Step benchmark: pdalign vs TRL\n\nan unmarked table\n")
    assert bench.read_kinds(tmp_path / "bench.json") == {"avx2": old}

    _quick_run(bench, tmp_path, monkeypatch, "amx")
    kinds = json.loads((tmp_path / "bench.json").read_text())
    assert set(kinds) == {"avx2", "amx"} and kinds["avx2"] == old
    sections = bench.split_sections((tmp_path / "bench.md").read_text())
    assert list(sections) == ["avx2", "amx"]
    dpo = next(r for r in old["rows"] if r["trainer"] == "dpo")
    assert f"| dpo | fixed | {dpo['s_per_step']:.3f} |" in sections["avx2"]
    assert old["settings"]["cpu"]["model"] in sections["avx2"].splitlines()[1]
    assert "an unmarked table" not in (tmp_path / "bench.md").read_text()


def test_primal_dual_rows_turn_on_every_built_in_constraint_or_one_kind(tmp_path):
    """The primal_dual row composes with every conf/constraints/*.yaml, the new pair and opener
    kinds among them; the pairs and openers rows with exactly their two."""
    bench = _load_bench()
    shipped = {p.stem for p in (ROOT / "conf" / "constraints").glob("*.yaml")}
    assert {"refusal_pairs", "over_refusal_pairs", "refusal_openers",
            "over_refusal_openers", "refusal", "over_refusal", "toxicity", "length"} <= shipped
    base = {"model": "tiny", "qlora": False, "data_path": str(tmp_path / "d.jsonl"),
            "warmup": 1, "steps": 4, "batch": 2, "threads": 1, "precompute": False,
            "work_dir": str(tmp_path), "method": "primal_dual"}
    expect = {"primal_dual": shipped,
              "primal_dual_pairs": {"refusal_pairs", "over_refusal_pairs"},
              "primal_dual_openers": {"refusal_openers", "over_refusal_openers"}}
    for name, names in expect.items():
        t = bench.TRAINERS[name]
        cfg = bench.compose(bench.overrides({**base, "constraints": list(t.constraints)}))
        assert set(cfg.constraints) == names, name
    assert bench.RATIO_PAIRS["primal_dual_pairs_time_vs_dpo"][:2] == ("primal_dual_pairs", "dpo")
    # a spec without a list (experiments/profile_step.py's) keeps the round-one four
    cfg = bench.compose(bench.overrides(base))
    assert set(cfg.constraints) == {"toxicity", "refusal", "kl_budget", "length"}


# ---- scaling (experiments/bench_scaling.py) ----------------------------------------------------

def _load_scaling():
    _load_bench()  # the same bench_step module the scaling script imports
    if "bench_scaling" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench_scaling", ROOT / "experiments" / "bench_scaling.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_scaling"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_scaling"]


def test_fit_line_on_hand_made_numbers():
    """An exact line returns its slope and intercept. By hand for (0,0), (1,1), (2,0):
    mean x 1, mean y 1/3; sum (x - 1)(y - 1/3) = (-1)(-1/3) + 0 + (1)(-1/3) = 0, so slope 0
    and intercept 1/3."""
    fit = _load_scaling().fit_line
    exact = fit([0, 1, 3, 9], [0.75 + 0.5 * x for x in (0, 1, 3, 9)])
    assert math.isclose(exact["slope"], 0.5) and math.isclose(exact["intercept"], 0.75)
    assert exact["n"] == 4
    flat = fit([0, 1, 2], [0, 1, 0])
    assert abs(flat["slope"]) < 1e-12 and math.isclose(flat["intercept"], 1 / 3)
    tokens = fit([0.64, 1.28, 2.56, 5.12], [1 + 7.5 * k for k in (0.64, 1.28, 2.56, 5.12)])
    assert math.isclose(tokens["slope"], 7.5)  # seconds per 1k tokens
    gap = fit([1, 2, 3], [2.0, None, 6.0])  # a failed run is left out, not read as 0
    assert gap["n"] == 2 and math.isclose(gap["slope"], 2.0)
    assert fit([2, 2], [1.0, 3.0]) is None and fit([1], [1.0]) is None


def test_scaling_sizes_grow_by_batch_and_by_length():
    scaling = _load_scaling()
    args = scaling.parse_args([])
    assert args.tokens == [640, 1280, 2560, 5120] and args.counts == [0, 1, 3,
                                                                      len(scaling.COUNT_ORDER)]
    pts = scaling.points(args)
    assert pts == {"batch": [(2, 160), (4, 160), (8, 160), (16, 160)],
                   "seq": [(2, 160), (2, 320), (2, 640), (2, 1280)]}
    assert scaling.COUNT_ORDER[:3] == ["refusal_pairs", "refusal", "kl_budget"]
    assert sorted(scaling.COUNT_ORDER) == sorted(_load_bench().CONSTRAINTS)


def test_scaling_bad_sizes_fail_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_scaling.py"),
                           "--model", "tiny", "--tokens", "640,1000", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("--tokens [1000]: each size must be")
    assert "Traceback" not in proc.stderr and not out.exists()


def _scaling_run(scaling, monkeypatch, argv: list[str]) -> dict:
    import torch

    # TRL's runs are skipped (trl_available False) so the test needs neither TRL nor its time;
    # the TRL child itself is exercised by test_tiny_run_writes_the_documented_schema.
    monkeypatch.setattr(scaling.bench, "trl_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        return scaling.main(["--model", "tiny", "--rounds", "1", "--steps", "1", "--warmup",
                             "0", "--threads", "1", "--seq-len", "80", "--batch", "2",
                             "--count-batch", "2", *argv])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_scaling_tiny_run_by_tokens_writes_table_and_plot(tmp_path, monkeypatch):
    """Two sizes (320 and 640 tokens per step by batch), each a fresh process: the medians,
    a slope per measure, the scaling section of bench.md and a PNG."""
    scaling = _load_scaling()
    data = _scaling_run(scaling, monkeypatch, ["--tokens", "320,640", "--series", "batch",
                                               "--counts", "", "--out", str(tmp_path)])
    kind = data["settings"]["cpu"]["kind"]
    assert [(p["batch"], p["seq_len"]) for p in data["tokens"]] == [(2, 80), (4, 80)]
    assert all(p["s_per_step"] > 0 and p["peak_rss_mb"] > 0 for p in data["tokens"])
    (fit,) = data["token_slopes"]
    assert fit["trainer"] == "dpo" and fit["time"]["n"] == 2 and fit["rss"]["n"] == 2
    assert json.loads((tmp_path / "bench_scaling.json").read_text())[kind]["token_slopes"] == [fit]
    section = _load_bench().split_sections((tmp_path / "bench.md").read_text())[f"scaling/{kind}"]
    assert "| dpo | batch | 2 × 80 | 320 |" in section and "s per 1k tokens" in section
    assert f"| dpo | batch | {fit['time']['slope']:.3f} |" in section
    png = (tmp_path / "bench_scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_scaling_tiny_run_by_constraints_keeps_the_step_sections(tmp_path, monkeypatch):
    """0 and 1 constraints on the primal-dual step: a slope per constraint in its table; the
    step bench's sections (here an older-format bench.json) stay where they are."""
    bench, scaling = _load_bench(), _load_scaling()
    old = bench.read_kinds(ROOT / "experiments" / "results" / "bench.json")["avx2"]
    (tmp_path / "bench.json").write_text(json.dumps(old))
    data = _scaling_run(scaling, monkeypatch, ["--tokens", "", "--counts", "0,1",
                                               "--out", str(tmp_path)])
    assert [c["constraints"] for c in data["counts"]] == [[], ["refusal_pairs"]]
    assert all(c["s_per_step"] > 0 for c in data["counts"]) and data["count_slope"]["n"] == 2
    sections = bench.split_sections((tmp_path / "bench.md").read_text())
    kind = data["settings"]["cpu"]["kind"]
    assert list(sections) == ["avx2", f"scaling/{kind}"]
    assert f"{data['count_slope']['slope']:.3f} s per constraint" in sections[f"scaling/{kind}"]
    assert json.loads((tmp_path / "bench.json").read_text()) == old  # not rewritten
    assert (tmp_path / "bench_scaling.png").is_file()
