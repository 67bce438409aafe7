# Run:  .venv/bin/python experiments/memory_table.py            (the sizing table only, instant)
#       .venv/bin/python experiments/memory_table.py --check    (+ real CPU runs, ~3 min)
"""Peak memory per rank, predicted by `pdalign.training.memory`, and the model checked on CPU.

Without ``--check`` it prints the sizing table of the README's "Scaling out" section: Llama-3 8B
and 70B, LoRA and QLoRA, DDP and FSDP2 on 8 GPUs, bf16, a micro-batch of 8192 tokens and
rollouts of 8 x 512 tokens.

With ``--check`` it also trains the tiny model and the embedded SmolLM2-135M for a few DPO steps
(LoRA r=16 on q/k/v/o, 4 quickstart pairs per step), each in a fresh process that reports its
own peak RSS (``ru_maxrss``) and the largest number of tokens one step ran, and compares that
with the model's prediction for the same shape, dtype and tokens. The runtime part (the process
before any model) is measured the same way, in a process that imports pdalign's trainer and its
dependencies and loads nothing. Writes ``experiments/results/memory/memory.md`` and
``memory.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from pdalign.runfiles.atomic import write_text
from pdalign.training.memory import SHAPES, ModelShape, RunShape, predict, sizing_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "memory"
TOLERANCE = 0.25  # the bar: predicted within 25% of measured peak RSS
CHECKS = {  # name -> pdalign overrides (DPO, LoRA r=16 q/k/v/o, the quickstart pairs)
    "tiny, fp32": ["model=tiny", "train.dtype=fp32"],
    "tiny, auto": ["model=tiny"],
    "smollm2_135m, fp32": ["model=smollm2_135m", "train.dtype=fp32"],
    "smollm2_135m, auto": ["model=smollm2_135m"],
}
COMMON = ["method=dpo", "train.steps=3", "train.batch_size=4", "logging.wandb=false",
          "eval.every=0", "data.heldout=null", "train.threads=2"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(spec: dict) -> dict:
    """One measured process: the runtime alone, or a short training run."""
    import peft  # noqa: F401
    import torch  # noqa: F401  (the runtime part includes it)

    from pdalign.training import trainer  # noqa: F401  (imports transformers, accelerate, ...)

    if spec["kind"] == "runtime":
        return {"peak_mb": _peak_mb()}
    sys.path.insert(0, str(ROOT))
    from pdalign.policy.precision import resolve_dtype
    from pdalign.runfiles.metrics import read_metrics, split_records
    from tests.conftest import compose

    cfg = compose([*spec["overrides"], *COMMON])
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(cfg, Path(tmp) / "run")
        rows, _ = split_records(read_metrics(Path(tmp) / "run" / "metrics.jsonl"))
    tokens = max(round(r["tokens_per_s"] * r["step_time_s"]) for r in rows)
    dtype = resolve_dtype(cfg.train.dtype, "cpu")
    return {"peak_mb": _peak_mb(), "tokens": tokens, "compute_bytes": dtype.itemsize}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_shape() -> ModelShape:
    from pdalign.policy.models import build_tiny, load_tokenizer

    return ModelShape.from_config(build_tiny(len(load_tokenizer("tiny"))).config)


def check() -> list[dict]:
    runtime = run_child({"kind": "runtime"})["peak_mb"]
    shapes = {"tiny": tiny_shape(), "smollm2_135m": SHAPES["smollm2_135m"]}
    rows = []
    for name, overrides in CHECKS.items():
        got = run_child({"kind": "train", "overrides": overrides})
        run = RunShape(adapter="lora", compute_bytes=got["compute_bytes"], tokens=got["tokens"],
                       device="cpu", embed_bytes=4, runtime_bytes=runtime * 2**20)
        parts = predict(shapes[name.split(",")[0]], run)
        predicted = parts["total"] / 2**20
        rows.append({"run": name, "tokens_per_step": got["tokens"],
                     "compute_dtype": {2: "bf16", 4: "fp32"}[got["compute_bytes"]],
                     "measured_mb": round(got["peak_mb"]), "predicted_mb": round(predicted),
                     "ratio": predicted / got["peak_mb"],
                     "parts_mb": {k: round(v / 2**20) for k, v in parts.items()}})
        print(f"{name}: measured {got['peak_mb']:.0f} MB, predicted {predicted:.0f} MB "
              f"({predicted / got['peak_mb']:.2f}x)", flush=True)
    return [{"run": "runtime (imports only)", "measured_mb": round(runtime)}] + rows


def table_md(rows: list[dict]) -> str:
    parts = ["weights", "adapter+optimizer", "activations", "lm head", "rollout kv cache", "runtime"]
    head = ["model", "adapter", "sharding", *parts, "total", "activations, recompute=1",
            "total, recompute=1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(parts) + 3)]
    for r in rows:
        cells = [f"{r['model']} ({r['params_b']:.1f}B)", r["adapter"],
                 f"{r['sharding']} x{r['world']}"]
        cells += [f"{r[p]:.1f}" for p in parts] + [f"**{r['total']:.1f}**"]
        cells += [f"{r['activations, recompute=1']:.1f}", f"**{r['total, recompute=1']:.1f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_md(rows: list[dict]) -> str:
    lines = ["| run | dtype | tokens/step | measured peak RSS MB | predicted MB | predicted / "
             "measured | within 25% |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows[1:]:
        ok = abs(r["ratio"] - 1) <= TOLERANCE
        lines.append(f"| {r['run']} | {r['compute_dtype']} | {r['tokens_per_step']} | "
                     f"{r['measured_mb']} | {r['predicted_mb']} | {r['ratio']:.2f} | "
                     f"{'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="also measure CPU runs against the model")
    p.add_argument("--out", type=Path, default=RESULTS, help="output dir (with --check)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    rows = sizing_rows()
    table = table_md(rows)
    print("Predicted peak GiB per GPU (8 GPUs, bf16, 8192 tokens per micro-batch, rollouts of "
          "8 x 512 tokens):\n\n" + table)
    if not args.check:
        return 0
    measured = check()
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                 if ln.startswith("model name")), "unknown CPU")
    md = (f"# Memory model: sizing table and CPU check\n\nWritten by `python "
          f"experiments/memory_table.py --check` on {name} (2 threads). The model is "
          f"`pdalign/training/memory.py`; nothing in it is fitted to these runs.\n\n"
          f"## Check against measured peak RSS (DPO, LoRA r=16 q/k/v/o, 4 quickstart pairs "
          f"per step, 3 steps)\n\nRuntime part measured in a process that imports pdalign's "
          f"trainer, torch, transformers and peft and loads no model: "
          f"{measured[0]['measured_mb']} MB.\n\n{check_md(measured)}\n\n"
          f"## Predicted peak GiB per GPU (8 GPUs, bf16, 8192 tokens per micro-batch, "
          f"rollouts of 8 x 512 tokens)\n\n{table}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "memory.md", md)
    write_text(args.out / "memory.json", json.dumps({"check": measured, "sizing": rows},
                                                    indent=1) + "\n")
    print(check_md(measured))
    print(f"wrote {args.out / 'memory.md'}")
    bad = [r["run"] for r in measured[1:] if abs(r["ratio"] - 1) > TOLERANCE]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
