# Run:  .venv/bin/python experiments/bench_scaling.py --rounds 3 --steps 4 --warmup 1 --threads 2
#         (the published table: replaces this CPU kind's scaling section of results/bench.md,
#          its entry in results/bench_scaling.json, and results/bench_scaling.png; run it on an
#          idle machine with TRL installed, pip install -e '.[dev,bench]')
#       .venv/bin/python experiments/bench_scaling.py --model tiny --rounds 1 --steps 1 \
#           --tokens 320,640 --seq-len 80 --batch 2 --count-batch 2 --counts 0,1
#         (smoke run on the tiny model; writes to a temp dir, never to results/)
"""How a step's cost grows: s/step and peak RSS against tokens per step and against constraints.

Users size sweeps from slopes, not from one point. Two parts, run together under
``experiments/bench_step.py``'s discipline (its machinery, imported, not copied: every run a fresh
process reporting its own peak RSS, the same rows, LoRA, dtype rule and step timers, interleaved
rounds whose order rotates by one, medians over rounds):

- tokens per step T (``--tokens``, default 640, 1280, 2560, 5120) for pdalign DPO (``dpo``) and
  TRL DPO (``trl_dpo``), grown two ways: by batch (``T / (2 * seq_len)`` pairs of ``--seq-len``
  160-token sequences) and by sequence length (``--batch`` 2 pairs of ``T / (2 * batch)``-token
  sequences). The smallest size is the same run in both series and is run once. T counts
  chosen + rejected tokens as pdalign tokenizes them (TRL's are one more per sequence);
- the number of constraints (``--counts``, default 0, 1, 3, all) of the primal-dual step at
  ``--count-batch`` 4 pairs of ``--seq-len`` tokens (the step bench's 1280 tokens): the first n
  of `COUNT_ORDER` (refusal_pairs, then refusal, kl_budget: one of each kind, then the rest), all
  = every ``conf/constraints/*.yaml`` as in the step bench's ``primal_dual`` row; 0 = the
  primal-dual method with no constraint (the Lagrangian's bookkeeping alone).

Slopes are ordinary least-squares lines through the medians (`fit_line`): seconds per 1k tokens
and MB of peak RSS per 1k tokens for each framework and series, seconds per constraint. A slope is
the marginal cost of one more unit; the intercept is what a step costs at none (load, optimizer,
launch overhead) and is not a measurement. The constraints differ in cost (a rollout constraint
every ``rollout_every`` steps, a pair constraint every step), so seconds per constraint is the
average over this mix; the step bench's ``primal_dual_pairs`` / ``primal_dual_openers`` rows give
the kinds alone.

Writes the ``scaling/<kind>`` section of ``bench.md`` (other sections untouched), the kind's
entry of ``bench_scaling.json`` and ``bench_scaling.png`` (one row of panels per kind measured).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from pdalign.runfiles.atomic import atomic_open


def _bench():
    """experiments/bench_step.py as a module: its rows, children, rounds and files."""
    if "bench_step" not in sys.modules:  # dataclasses look their module up in sys.modules
        path = Path(__file__).resolve().parent / "bench_step.py"
        spec = importlib.util.spec_from_file_location("bench_step", path)
        sys.modules["bench_step"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_step"])
    return sys.modules["bench_step"]


bench = _bench()

FRAMEWORKS = ("dpo", "trl_dpo")  # bench_step.TRAINERS rows of the tokens part
SERIES = ("batch", "seq")
# The constraints a count of n turns on: the first n. One of each kind first (pair, rollout,
# batch), so 1 and 3 are a realistic start; the rest in name order.
COUNT_ORDER = [c for c in ("refusal_pairs", "refusal", "kl_budget") if c in bench.CONSTRAINTS]
COUNT_ORDER += [c for c in bench.CONSTRAINTS if c not in COUNT_ORDER]


def fit_line(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares line y = intercept + slope * x through the points; None below two x values.

    Closed form: slope = sum((x - mx)(y - my)) / sum((x - mx)^2), intercept = my - slope * mx.
    Points whose y is None (a failed run) are left out.
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    slope = (sum((x - mx) * (y - my) for x, y in pts)
             / sum((x - mx) ** 2 for x, _ in pts))
    return {"slope": slope, "intercept": my - slope * mx, "n": len(pts)}


def count_value(text: str) -> int:
    """A ``--counts`` entry as a number of constraints (``all`` = every built-in one)."""
    n = len(COUNT_ORDER) if text == "all" else int(text)
    if not 0 <= n <= len(COUNT_ORDER):
        raise ValueError(text)
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_common_args(p)
    p.add_argument("--tokens", default="640,1280,2560,5120",
                   help="tokens per step (chosen + rejected) of the DPO runs; '' skips the part")
    p.add_argument("--series", default="batch,seq", help="how tokens grow: batch, seq or both")
    p.add_argument("--seq-len", type=int, default=160,
                   help="tokens per sequence of the by-batch series and the constraint runs")
    p.add_argument("--batch", type=int, default=2, help="pairs per step of the by-sequence series")
    p.add_argument("--counts", default="0,1,3,all",
                   help="numbers of constraints of the primal-dual runs; '' skips the part")
    p.add_argument("--count-batch", type=int, default=4, help="pairs per step of those runs")
    args = p.parse_args(argv)
    try:
        args.tokens = sorted({int(t) for t in args.tokens.split(",") if t.strip()})
        args.counts = sorted({count_value(c.strip()) for c in args.counts.split(",") if c.strip()})
    except ValueError as err:
        raise SystemExit(f"--tokens / --counts: not a size or a count of 0..{len(COUNT_ORDER)} "
                         f"or 'all': {err}") from None
    args.series = [s.strip() for s in args.series.split(",") if s.strip()]
    if not set(args.series) <= set(SERIES) or not args.series:
        raise SystemExit(f"--series: choose from {','.join(SERIES)}")
    if min(args.rounds, args.steps, args.threads, args.batch, args.seq_len,
           args.count_batch) < 1 or args.warmup < 0:
        raise SystemExit("--rounds, --steps, --threads, --batch, --seq-len, --count-batch must "
                         "be >= 1, --warmup >= 0")
    bad = [t for t in args.tokens
           if ("batch" in args.series and t % (2 * args.seq_len))
           or ("seq" in args.series and t % (2 * args.batch))]
    if bad:
        raise SystemExit(f"--tokens {bad}: each size must be a multiple of 2 * --seq-len "
                         f"({2 * args.seq_len}) and of 2 * --batch ({2 * args.batch})")
    if not args.tokens and not args.counts:
        raise SystemExit("--tokens and --counts are both empty: nothing to measure")
    return args


def points(args: argparse.Namespace) -> dict[str, list[tuple[int, int]]]:
    """``{series: [(pairs, tokens per sequence), ...]}`` in growing tokens per step."""
    out = {}
    if "batch" in args.series:
        out["batch"] = [(t // (2 * args.seq_len), args.seq_len) for t in args.tokens]
    if "seq" in args.series:
        out["seq"] = [(args.batch, t // (2 * args.batch)) for t in args.tokens]
    return out


def run_name(trainer: str, batch: int, seq_len: int) -> str:
    return f"{trainer}/b{batch}-s{seq_len}"


def markdown(payload: dict) -> str:
    """The ``scaling/<kind>`` section of bench.md (without its marker)."""
    s, run = payload["settings"], payload["run"]
    cpu = s["cpu"]
    lines = [f"## Scaling, {bench.machine_kind(s)}: {s.get('gpu') or cpu['model']}", "",
             f"**Machine:** {cpu['model']} ({', '.join(cpu['capabilities'])}; "
             f"{cpu['logical_cpus']} logical CPUs), {s['threads']} threads, dtype rule "
             f"train.dtype=auto ({s['dtype']}), model {s['model']}. {run['rounds']} interleaved "
             f"rounds × {run['steps']} timed steps after {run['warmup']} warm-up, each run a "
             f"fresh process; medians over rounds. Load average at start / end: "
             f"{run['loadavg_start']} / {run['loadavg_end']}. Finished {run['finished']}.", "",
             f"Command: `{run['command']}`", ""]
    if payload["tokens"]:
        lines += ["### Against tokens per step (DPO)", "",
                  "| trainer | series | pairs × tokens | tokens/step | s/step | peak RSS MB |",
                  "|---|---|---|---:|---:|---:|"]
        for p in payload["tokens"]:
            lines.append(f"| {p['trainer']} | {p['series']} | {p['batch']} × {p['seq_len']} | "
                         f"{p['tokens_per_step']} | {bench._fmt(p['s_per_step'], '.3f')} | "
                         f"{bench._fmt(p['peak_rss_mb'], '.0f')} |")
        lines += ["", "| trainer | series | s per 1k tokens | MB per 1k tokens | s at 0 tokens "
                  "| MB at 0 tokens |", "|---|---|---:|---:|---:|---:|"]
        for f in payload["token_slopes"]:
            t, m = f["time"] or {}, f["rss"] or {}
            lines.append(f"| {f['trainer']} | {f['series']} | {bench._fmt(t.get('slope'), '.3f')}"
                         f" | {bench._fmt(m.get('slope'), '.1f')} | "
                         f"{bench._fmt(t.get('intercept'), '.2f')} | "
                         f"{bench._fmt(m.get('intercept'), '.0f')} |")
        ratios = {k: v for k, v in payload["slope_ratios"].items() if v is not None}
        if ratios:
            lines += ["", "pdalign's slope over TRL's: " + ", ".join(
                f"{k} {v:.2f}" for k, v in ratios.items()) + "."]
        lines.append("")
    if payload["counts"]:
        c = payload["counts"][0]
        lines += [f"### Against the number of constraints (primal-dual, {c['batch']} pairs × "
                  f"{c['seq_len']} tokens)", "",
                  "| constraints | which | s/step | peak RSS MB |", "|---:|---|---:|---:|"]
        for p in payload["counts"]:
            which = ", ".join(p["constraints"]) or "none"
            lines.append(f"| {p['n']} | {which} | {bench._fmt(p['s_per_step'], '.3f')} | "
                         f"{bench._fmt(p['peak_rss_mb'], '.0f')} |")
        f = payload["count_slope"]
        lines += ["", "Slope: " + ("—" if f is None else
                                   f"{f['slope']:.3f} s per constraint (line at 0 constraints: "
                                   f"{f['intercept']:.2f} s)") + "; rollout constraints cost on "
                  "their rollout steps, so this is the mean over the mix above.", ""]
    lines += ["How to read: a slope is the added cost of 1k more tokens per step (or one more "
              "constraint); a step of T tokens costs about intercept + slope × T/1000. By batch "
              "and by sequence length differ where attention (quadratic in length) or per-row "
              "overhead matters. The intercept is the fit's, not a measured step."]
    if run["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in run["notes"]]
    return "\n".join(lines) + "\n"


def plot(kinds: dict[str, dict], path: Path) -> Path:
    """bench_scaling.png: per kind, s/step and peak RSS against tokens, s/step against
    constraints; measured medians as markers, fitted lines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kinds), 3, figsize=(15, 4 * len(kinds)), squeeze=False)
    colors = {"dpo": "tab:blue", "trl_dpo": "tab:orange"}
    styles = {"batch": "o", "seq": "s"}
    for row, (kind, payload) in zip(axes, kinds.items()):
        for f in payload["token_slopes"]:
            pts = [p for p in payload["tokens"]
                   if p["trainer"] == f["trainer"] and p["series"] == f["series"]]
            xs = [p["tokens_per_step"] for p in pts]
            label = f"{'pdalign' if f['trainer'] == 'dpo' else 'TRL'} DPO, by {f['series']}"
            for ax, key, fit in ((row[0], "s_per_step", f["time"]),
                                 (row[1], "peak_rss_mb", f["rss"])):
                ys = [p[key] for p in pts]
                ax.plot(xs, ys, styles[f["series"]], color=colors.get(f["trainer"]), label=label)
                if fit:
                    ax.plot(xs, [fit["intercept"] + fit["slope"] * x / 1000 for x in xs], "--",
                            color=colors.get(f["trainer"]), alpha=0.6)
        cs = payload["counts"]
        if cs:
            xs, ys = [p["n"] for p in cs], [p["s_per_step"] for p in cs]
            row[2].plot(xs, ys, "o", color="tab:green", label="pdalign primal-dual")
            if (fit := payload["count_slope"]):
                row[2].plot(xs, [fit["intercept"] + fit["slope"] * x for x in xs], "--",
                            color="tab:green", alpha=0.6,
                            label=f"{fit['slope']:.2f} s per constraint")
        titles = ("s/step against tokens per step", "peak RSS against tokens per step",
                  "s/step against constraints")
        labels = (("tokens per step", "s/step"), ("tokens per step", "peak RSS (MB)"),
                  ("constraints", "s/step"))
        for ax, title, (xl, yl) in zip(row, titles, labels):
            ax.set_title(f"{kind}: {title}")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = bench.output_dir(args)
    import torch

    from pdalign.policy.models import EMBEDDED, load_tokenizer
    from pdalign.policy.precision import resolve_dtype
    from pdalign.training.manifest import cpu_info

    notes = bench.idle_note()
    frameworks = list(FRAMEWORKS)
    if not bench.trl_available():
        frameworks = [f for f in frameworks if bench.TRAINERS[f].framework != "trl"]
        notes.append("TRL is not installed (pip install -e '.[dev,bench]'); its DPO runs were skipped")
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    model_name = "tiny" if args.model == "tiny" else EMBEDDED
    work = Path(tempfile.mkdtemp(prefix="pdalign-scaling-work-"))
    print(f"work dir {work}; output {out}", file=sys.stderr)
    tokenizer = load_tokenizer(model_name)
    n_steps = args.warmup + args.steps

    # ---- the runs: one per distinct (trainer, pairs, tokens per sequence) ----------------------
    series = points(args)
    shapes = {(b, s) for pts in series.values() for b, s in pts}
    if args.counts:
        shapes.add((args.count_batch, args.seq_len))
    rows_by_len = {s: bench.fixed_rows(tokenizer, n_steps * max(b for b, t in shapes if t == s), s)
                   for s in {s for _, s in shapes}}
    data = {}
    for b, s in sorted(shapes):
        data[b, s] = bench.write_jsonl(rows_by_len[s][:b * n_steps], work / f"b{b}-s{s}.jsonl")
        found = set(bench.real_tokens(tokenizer, data[b, s], max_length=s + 16))
        if found != {2 * s}:
            raise RuntimeError(f"fixed rows of {s} tokens came out as {found}")

    def spec(trainer, b: int, s: int) -> dict:
        # max_length above every sequence (TRL's one token longer), never below the step bench's
        return bench.child_spec(trainer, data_path=data[b, s], args=args, batch=b,
                                pair_tokens=2 * b * s, max_length=max(bench.MAX_LENGTH, s + 16))

    specs = {}
    for name in frameworks:
        for pts in series.values():
            for b, s in pts:
                specs.setdefault(run_name(name, b, s), spec(bench.TRAINERS[name], b, s))
    for n in args.counts:
        t = bench.Trainer("pdalign", "primal_dual", constraints=tuple(COUNT_ORDER[:n]))
        specs[f"primal_dual/n{n}"] = spec(t, args.count_batch, args.seq_len)
    rounds = bench.run_rounds(specs, rounds=args.rounds, warmup=args.warmup,
                              timeout=args.child_timeout, work=work)

    # ---- medians and slopes ------------------------------------------------------------------
    def median_of(name: str, key: str):
        return bench._median([rnd[name].get(key) for rnd in rounds if not rnd[name].get("error")])

    errors = sorted({f"{name}: {rnd[name]['error']}" for rnd in rounds for name in rnd
                     if rnd[name].get("error")})
    notes += [f"failed: {e}" for e in errors]
    tokens, token_slopes = [], []
    for name in frameworks:
        for label, pts in series.items():
            group = []
            for b, s in pts:
                run = run_name(name, b, s)
                group.append({"trainer": name, "series": label, "batch": b, "seq_len": s,
                              "tokens_per_step": 2 * b * s, "run": run,
                              "s_per_step": median_of(run, "s_per_step"),
                              "peak_rss_mb": median_of(run, "peak_rss_mb")})
            ks = [p["tokens_per_step"] / 1000 for p in group]
            token_slopes.append({"trainer": name, "series": label,
                                 "time": fit_line(ks, [p["s_per_step"] for p in group]),
                                 "rss": fit_line(ks, [p["peak_rss_mb"] for p in group])})
            tokens += group
    slope_ratios = {}
    for label in series:
        fits = {f["trainer"]: f for f in token_slopes if f["series"] == label}
        for what in ("time", "rss"):
            a, b = (fits.get(k, {}).get(what) for k in FRAMEWORKS)
            slope_ratios[f"dpo_{what}_slope_vs_trl_by_{label}"] = (
                a["slope"] / b["slope"] if a and b and b["slope"] else None)
    counts = [{"n": n, "constraints": COUNT_ORDER[:n], "batch": args.count_batch,
               "seq_len": args.seq_len, "s_per_step": median_of(f"primal_dual/n{n}", "s_per_step"),
               "peak_rss_mb": median_of(f"primal_dual/n{n}", "peak_rss_mb")}
              for n in args.counts]
    count_slope = fit_line([c["n"] for c in counts], [c["s_per_step"] for c in counts])

    if args.counts and args.steps % 4:
        notes.append(f"--steps {args.steps} is not a multiple of rollout_every=4: the timed "
                     f"primal-dual steps do not hold exactly one rollout per 4 steps")
    notes.append("tokens per step count pdalign's tokenization (chosen + rejected); TRL's runs "
                 "read the same rows and tokenize one more token per sequence")
    command = "python experiments/bench_scaling.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    payload = {
        "settings": {"model": model_name, "threads": args.threads,
                     "dtype": str(resolve_dtype("auto", device)).replace("torch.", ""),
                     "cpu": {**cpu_info(), "kind": bench.detect_cpu_kind()},
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        "tokens": tokens, "token_slopes": token_slopes, "slope_ratios": slope_ratios,
        "counts": counts, "count_slope": count_slope,
        "rounds": rounds,
        "run": {"command": command, "rounds": args.rounds, "steps": args.steps,
                "warmup": args.warmup, "device": device, "loadavg_start": loadavg_start,
                "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "versions": bench.run_versions(), "notes": notes},
    }
    kind = bench.machine_kind(payload["settings"])
    kinds = bench.write_kind(out / "bench_scaling.json", kind, payload)
    key = f"scaling/{kind}"
    bench.update_markdown(out, {key: bench.section(key, markdown(payload))})
    plot(kinds, out / "bench_scaling.png")
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote the {key} section of {out / 'bench.md'}, {out / 'bench_scaling.json'} and "
          f"{out / 'bench_scaling.png'}", file=sys.stderr)
    print(json.dumps({"token_slopes": token_slopes, "count_slope": count_slope}, indent=1),
          file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
