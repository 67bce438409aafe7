# Run:  .venv/bin/python experiments/bench_eval.py --baseline 2a72dcc --rounds 3 --prompts 96
#         (the published table: replaces this CPU kind's eval section of results/bench.md and its
#          entry in results/bench_eval.json; run it on an idle machine)
#       .venv/bin/python experiments/bench_eval.py --model tiny --rounds 1 --prompts 4
#         (smoke run on the tiny model; writes to a temp dir, never to results/)
"""Held-out evaluation time per 100 prompts of 32 new tokens: this checkout against a baseline.

What is timed. `pdalign.evaluation.heldout.evaluate`, as the trainer's end-of-run evaluation,
``pdalign-eval`` and ``pdalign-battery`` call it, on the embedded SmolLM2-135M under the study's
setup (``experiment=compare_openers``: QLoRA, or ``--peft lora``) with a fresh adapter, the
dtype of ``train.dtype=auto`` and the eval config's own settings (batch 16, temperature 1,
top-p 1), ``--threads`` threads. Two rows per code version:

- ``sample``: `pdalign.policy.sampling.generate` on ``--prompts`` prompts of
  ``adversarial_heldout`` (the sampled, phrase-judged row of every rollout and opener
  constraint, and what ``pdalign-generate`` and the battery's base rows run);
- ``evaluate``: `evaluate` with the study's two opener bounds (``refusal_openers`` on
  ``adversarial_heldout``, ``over_refusal_openers`` on ``benign_heldout``), ``--prompts``
  prompts each: per set one sampled row and one exact ``.opener`` row.

Each is reported as seconds per 100 prompts (``evaluate``: per 100 prompts of one set, both
rows). Samples are ``max_new_tokens`` = 32 long at most; the fresh adapter is the base model, so
two code versions with the same sampler generate the same tokens (the table says whether they
did: ``same samples``). Against a baseline from before `pdalign.policy.sampling.sample_next`
(inverse-CDF draws in place of ``torch.multinomial``'s) they are different draws from the same
distribution, and the metric values differ by sampling noise.

The baseline. ``--baseline REV`` checks REV out into a temporary git worktree and times its
``pdalign`` in the same rounds: every round runs each code version once, each in a fresh
process (so one's allocations and threads do not reach the other), the order rotating by one;
the ratio is taken within a round and the median over rounds reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
SETS = {"refusal_openers": "adversarial_heldout", "over_refusal_openers": "benign_heldout"}


def _bench():
    """experiments/bench_step.py as a module: its config composition, kinds and files."""
    if "bench_step" not in sys.modules:
        path = Path(__file__).resolve().parent / "bench_step.py"
        spec = importlib.util.spec_from_file_location("bench_step", path)
        sys.modules["bench_step"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_step"])
    return sys.modules["bench_step"]


# ---- the child: one code version, one measurement ---------------------------------------------

def child(spec: dict) -> dict:
    """Time ``sample`` and ``evaluate`` with the ``pdalign`` found first on sys.path."""
    if spec["code"]:
        sys.path.insert(0, spec["code"])
    import torch

    import pdalign
    from pdalign.contract.prompts import bundled_prompts_dir, load_prompts
    from pdalign.evaluation.heldout import eval_kwargs, evaluate
    from pdalign.policy.precision import autocast
    from pdalign.policy.sampling import generate
    from pdalign.training import build

    where = Path(pdalign.__file__).resolve()
    if spec["code"] and Path(spec["code"]).resolve() not in where.parents:
        raise RuntimeError(f"pdalign imported from {where}, not from {spec['code']}")
    torch.set_num_threads(spec["threads"])
    model = ["model=tiny"] if spec["model"] == "tiny" else []
    cfg = _bench().compose(["experiment=compare_openers", f"peft={spec['peft']}",
                            "method=primal_dual", "logging.wandb=false", *model])
    device = torch.device("cpu")
    dtype, quant = build.build_precision(cfg, device)
    tokenizer = build.build_tokenizer(cfg)
    policy = build.build_policy(cfg, tokenizer, dtype=dtype, quant=quant, device=device,
                                needs_reference=False)
    constraints = [c for c in build.build_constraints(cfg) if c.name in SETS]  # the two openers
    for c in constraints:
        c.bind(policy, seed=0)
    kwargs = eval_kwargs(cfg.eval)
    kwargs.update(prompts_per_set=spec["prompts"], max_new_tokens=32, ifeval_prompts=0,
                  sets={name: {"id": s} for name, s in SETS.items()})
    prompts = load_prompts(bundled_prompts_dir() / f"{SETS['refusal_openers']}.jsonl",
                           "bench prompts")[:spec["prompts"]]
    sampling = {k: kwargs[k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size")}
    with autocast(dtype, device.type):  # warm-up: first-call allocations and kernel choices
        generate(policy.model, tokenizer, prompts[:2], seed=0,
                 **{**sampling, "max_new_tokens": 2})
    t0 = time.perf_counter()
    with autocast(dtype, device.type):
        rollout = generate(policy.model, tokenizer, prompts, seed=kwargs["seed"], **sampling)
    t1 = time.perf_counter()
    metrics = evaluate(policy.model, tokenizer, constraints, progress=False, dtype=dtype,
                       device=device, **kwargs)
    t2 = time.perf_counter()
    return {"sample_s": t1 - t0, "evaluate_s": t2 - t1, "dtype": str(dtype).split(".")[-1],
            "new_tokens": int(rollout.response_lengths.sum()), "samples": rollout.responses,
            "metrics": {k: v for k, v in metrics.items() if k.endswith("/value")},
            "batch_size": int(kwargs["batch_size"]),
            "pdalign": str(where.parent)}


def run_child(spec: dict, work: Path, timeout: float) -> dict:
    path = work / f"spec-{spec['name']}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    out = work / f"result-{spec['name']}.json"
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ---- the parent: rounds, table, files ---------------------------------------------------------

def worktree(rev: str, work: Path) -> Path:
    """REV checked out (detached) in a temporary git worktree under ``work``."""
    path = work / f"baseline-{rev}"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def per_100(seconds: float, prompts: int) -> float:
    return 100.0 * seconds / prompts


def summarize(rounds: list[dict], prompts: int) -> dict:
    """Medians over rounds of each version's seconds per 100 prompts, and of new/baseline."""
    out: dict = {}
    versions = list(rounds[0])
    for v in versions:
        out[v] = {"sample_s_per_100": statistics.median(
                      per_100(r[v]["sample_s"], prompts) for r in rounds),
                  "evaluate_s_per_100_per_set": statistics.median(
                      per_100(r[v]["evaluate_s"], prompts * len(SETS)) for r in rounds)}
    if "baseline" in versions:
        for key in ("sample_s", "evaluate_s"):
            out[f"{key.removesuffix('_s')}_time_vs_baseline"] = statistics.median(
                r["checkout"][key] / r["baseline"][key] for r in rounds)
        last = rounds[-1]
        out["same_samples"] = last["checkout"]["samples"] == last["baseline"]["samples"]
        out["max_metric_diff"] = max(
            (abs(last["checkout"]["metrics"][k] - last["baseline"]["metrics"].get(k, float("nan")))
             for k in last["checkout"]["metrics"]), default=0.0)
    return out


def markdown(payload: dict) -> str:
    s, r = payload["settings"], payload["results"]
    lines = [f"## Held-out evaluation, {payload['kind']}: {s['model']} ({s['peft']}, "
             f"{s['dtype']}, {s['threads']} threads), {s['date']}",
             "",
             f"`{s['command']}`; {s['rounds']} rounds, medians; {s['prompts']} prompts per set, "
             f"at most 32 new tokens, eval batch {s['batch_size']}. Baseline: "
             f"{s.get('baseline') or 'none'}.",
             "",
             "| code | sample: s per 100 prompts | evaluate: s per 100 prompts of a set |",
             "|---|---:|---:|"]
    for v in ("baseline", "checkout"):
        if v in r:
            lines.append(f"| {v} | {r[v]['sample_s_per_100']:.1f} | "
                         f"{r[v]['evaluate_s_per_100_per_set']:.1f} |")
    if "evaluate_time_vs_baseline" in r:
        lines += ["", f"checkout / baseline: sample {r['sample_time_vs_baseline']:.2f}, "
                      f"evaluate {r['evaluate_time_vs_baseline']:.2f}; same samples: "
                      f"{r['same_samples']}; largest difference in a metric value: "
                      f"{r['max_metric_diff']:.2g}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="a git revision to time beside the checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=96, help="prompts per set")
    p.add_argument("--peft", default="qlora", choices=("qlora", "lora"))
    p.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, default=None, help="default: results/ (a temp dir for tiny)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        result = child(spec)
        Path(args.child).with_name(f"result-{spec['name']}.json").write_text(json.dumps(result))
        return result
    bench = _bench()
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-eval-")) if args.model == "tiny"
                       else RESULTS)
    with tempfile.TemporaryDirectory(prefix="bench-eval-work-") as tmp:
        work = Path(tmp)
        versions = {"checkout": str(ROOT)}
        if args.baseline:
            versions["baseline"] = str(worktree(args.baseline, work))
        rounds = []
        try:
            for i in range(args.rounds):
                order = list(versions)[i % len(versions):] + list(versions)[:i % len(versions)]
                rounds.append({v: run_child({"name": f"{v}-{i}", "code": versions[v],
                                             "threads": args.threads, "prompts": args.prompts,
                                             "peft": args.peft, "model": args.model}, work,
                                            args.timeout) for v in order})
                print(f"round {i + 1}: " + ", ".join(
                    f"{v} sample {r['sample_s']:.1f} s, evaluate {r['evaluate_s']:.1f} s"
                    for v, r in rounds[-1].items()), flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", versions["baseline"]],
                               cwd=ROOT, capture_output=True)
    first = rounds[0]["checkout"]
    kind = bench.detect_cpu_kind()
    payload = {"kind": kind, "settings": {
        "command": "python experiments/bench_eval.py " + " ".join(argv or sys.argv[1:]),
        "model": "SmolLM2-135M" if args.model == "smollm2" else "tiny", "peft": args.peft,
        "dtype": first["dtype"], "threads": args.threads, "rounds": args.rounds,
        "prompts": args.prompts, "batch_size": first["batch_size"], "baseline": args.baseline,
        "date": time.strftime("%Y-%m-%d")}, "results": summarize(rounds, args.prompts)}
    key = f"eval/{kind}" + ("" if args.peft == "qlora" else f"/{args.peft}")
    out.mkdir(parents=True, exist_ok=True)
    bench.write_kind(out / "bench_eval.json", key, payload)
    bench.update_markdown(out, {key: bench.section(key, markdown(payload))})
    print(markdown(payload))
    print(f"wrote {out / 'bench_eval.json'} and {out / 'bench.md'}")
    return payload


if __name__ == "__main__":
    main()
