# Run:  .venv/bin/python experiments/profile_step.py            (embedded SmolLM2, ~2 min)
#       .venv/bin/python experiments/profile_step.py --model tiny --out /tmp/p   (smoke run)
"""Where a step's time goes: torch.profiler op tables of the trainer's own step, one process.

Three parts, each on the bench's rows (``experiments/bench_step.py``: 4 pairs of 160-token
sequences, LoRA r=16 on q/k/v/o, the `train.dtype=auto` dtype, ``--threads`` threads), each run
by `pdalign.training.trainer.primal_step` / the trainer's rollout manager on a `pdalign.training.trainer.setup`
run, so what is profiled is what training runs:

- ``orpo``: one ORPO primal step (forward over [chosen ; rejected] with the prompt shared,
  backward, optimizer step);
- ``dpo``: one DPO primal step (the same plus the adapter-disabled reference forward);
- ``rollout``: one rollout as the primal-dual bench row draws it (8 adversarial prompts, 48 new
  tokens, scored by toxicity, refusal and length).

Also the GEMM rate of the LM-head shapes (chunk of tokens x vocabulary), which run below the
square-GEMM rate the floor uses. Writes ``profile_step.md`` and ``profile_step.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from pdalign.runfiles.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def _bench():
    """experiments/bench_step.py as a module: its rows, data and config are the bench's."""
    if "bench_step" not in sys.modules:  # dataclasses look their module up in sys.modules
        path = Path(__file__).resolve().parent / "bench_step.py"
        spec = importlib.util.spec_from_file_location("bench_step", path)
        sys.modules["bench_step"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_step"])
    return sys.modules["bench_step"]


def _table(prof, rows: int = 12) -> tuple[str, list[dict]]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    out = []
    for e in events[:rows]:
        out.append({"op": e.key, "self_s": e.self_cpu_time_total / 1e6,
                    "share": e.self_cpu_time_total / total, "calls": e.count})
    lines = ["| op | self s | share | calls |", "|---|---:|---:|---:|"]
    lines += [f"| {r['op'][:60]} | {r['self_s']:.3f} | {100 * r['share']:.1f}% | {r['calls']} |"
              for r in out]
    return "\n".join(lines), out


def _gemm_rate(m: int, k: int, n: int, dtype, reps: int = 4) -> float:
    a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    torch.nn.functional.linear(a, w)
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    return 2 * m * k * n / ((time.perf_counter() - t) / reps) / 1e12


def main(argv: list[str] | None = None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from pdalign.policy.models import load_tokenizer
    from pdalign.training.trainer import primal_step, setup

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="output dir (default experiments/results)")
    args = p.parse_args(argv)
    bench = _bench()
    name = "embedded:smollm2-135m-instruct" if args.model == "embedded" else "tiny"
    work = Path(tempfile.mkdtemp(prefix="pdalign-profile-"))
    data = bench.write_jsonl(bench.fixed_rows(load_tokenizer(name), 8, 160), work / "pairs.jsonl")

    def built(method: str):
        spec = {"model": args.model, "qlora": False, "method": method, "data_path": str(data),
                "warmup": 1, "steps": 4, "batch": 4, "threads": args.threads,
                "precompute": False, "work_dir": str(work)}
        return setup(bench.pdalign_config(spec), work / method)

    runs = {m: built(m) for m in ("orpo", "dpo", "primal_dual")}
    rollout_s, rollout_state = runs["primal_dual"]
    clock = iter(range(0, 10**6, int(rollout_s.cfg.train.rollout_every)))

    def rollout() -> None:  # a fresh rollout: the manager samples once `every` steps have passed
        rollout_state.rollouts.maybe_sample(rollout_s.policy.model, next(clock))

    dtype = runs["dpo"][0].policy.dtype
    model = runs["dpo"][0].policy.model
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    result: dict = {"model": name, "dtype": str(dtype).replace("torch.", ""),
                    "threads": args.threads, "parts": {}}
    md = [f"# Where a step's time goes ({name}, {result['dtype']}, {args.threads} threads)", "",
          "Command: `python experiments/profile_step.py" + (" " + " ".join(argv) if argv else "")
          + "`", ""]
    parts = {"orpo": lambda: primal_step(*runs["orpo"]), "dpo": lambda: primal_step(*runs["dpo"]),
             "rollout": rollout}
    for part, fn in parts.items():
        fn()  # warm-up
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - t
        table, rows = _table(prof)
        result["parts"][part] = {"wall_s": wall, "ops": rows}
        md += [f"## {part}: {wall:.2f} s under the profiler", "", table, ""]
    for s, _ in runs.values():
        s.logger.close()
    rates = {}
    for m in (85, 341, 928):  # LM-head chunks: 2^22 logits (the default), 2^24, all tokens
        rates[str(m)] = _gemm_rate(m, hidden, vocab, dtype)
    rates["decoder_1104x576x1536"] = _gemm_rate(1104, hidden, 1536, dtype)
    rates["square_3072"] = _gemm_rate(3072, 3072, 3072, dtype, reps=2)
    result["gemm_tflops"] = rates
    md += ["## GEMM rates (TFLOP/s)", "", "| shape | TFLOP/s |", "|---|---:|"]
    md += [f"| {k if not k.isdigit() else k + ' tokens x ' + str(hidden) + ' x ' + str(vocab)} "
           f"| {v:.3f} |" for k, v in rates.items()]
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "profile_step.md", "\n".join(md) + "\n")
    write_text(out / "profile_step.json", json.dumps(result, indent=1) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
