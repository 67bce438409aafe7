# Run: make paper   (= .venv/bin/python paper/build.py)
"""Build paper/paper.md from paper/paper_template.md and the files in experiments/results/.

Every number in the paper comes from a results file through `values`; the template holds
``{{name}}`` placeholders only. An unknown placeholder is an error, so no number can be left
typed by hand or silently unfilled. The prose states directions (primal-dual lowers the KL
violation, refusal never moves, ...); `check_claims` re-derives each from the same files and
refuses to build a paper whose text the numbers contradict.

Sources, all under experiments/results/:

- ``bandit_kkt.json``, ``dual_ablation.json``: the closed-form bandit and its ablation;
- ``bench.json``: step cost against TRL and the matmul floor;
- ``compare/``: the compare sweep (runs, ``report.csv``, ``paired.csv``, plots) and
  ``base_eval.json``, the held-out evaluation of the untrained model;
- ``ablation/``: the SmolLM2 dual-rule x lambda-cap runs;
- ``iterative/``: the iterative on-policy constrained DPO run (its round files);
- ``drift_toxicity/``: the toxicity drift scenario, Section 5 (`paper/drift.py`).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from pdalign.contract.prompts import load_prompts
from pdalign.evaluation.ifeval import INSTRUCTION_STRICT, PROMPT_STRICT
from pdalign.reporting.runs import collect_runs
from pdalign.reporting.stats import plateau_step
from pdalign.runfiles.atomic import write_text
from pdalign.runfiles.metrics import eval_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from bench_step import read_kinds  # noqa: E402  (the one parser of bench.json)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift import (  # noqa: E402  (Section 5; the run reader and certificate cells of Section 4 too)
    _cell,
    _cert,
    _passes,
    check_control_claims,
    check_drift_claims,
    check_length_start_claims,
    control_values,
    drift_values,
    finished_runs,
    length_start_values,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"

# Held-out (constraint, prompt set) columns of the paper's tables, in reading order.
SETS = (("kl_budget", "id"), ("toxicity", "id"), ("refusal", "id"), ("refusal", "shifted"),
        ("over_refusal", "id"), ("length", "id"))
SAFETY = ("refusal", "over_refusal", "toxicity")  # the constraints a "safety violation" means
METHOD_ORDER = ("dpo", "primal_dual(dpo)", "orpo", "primal_dual(orpo)")
PAIRS = (("primal_dual(dpo)", "dpo"), ("primal_dual(orpo)", "orpo"))


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def _pm(mean: str, std: str, digits: int = 3) -> str:
    """'mean ± std' from CSV cells (std empty for one seed)."""
    if mean == "":
        return "–"
    text = _fmt(float(mean), digits)
    return f"{text} ± {_fmt(float(std), 2)}" if std != "" else text


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def bandit_values(results: Path) -> dict[str, str]:
    bandit = json.loads((results / "bandit_kkt.json").read_text())
    out = {"K": str(bandit["K"]), "beta": _fmt(bandit["beta"]),
           "epsilon": _fmt(bandit["epsilon"]), "lambda_star": _fmt(bandit["lambda_star"], 6),
           "cost_unconstrained": _fmt(bandit["expected_cost_unconstrained"])}
    for rule in ("gradient", "pid"):
        out[f"lambda_{rule}"] = _fmt(bandit["lambda_final"][rule], 6)
        out[f"cost_{rule}"] = _fmt(bandit["expected_cost_final"][rule], 6)
        out[f"reward_{rule}"] = _fmt(bandit["expected_reward_final"][rule], 6)
    abl = json.loads((results / "dual_ablation.json").read_text())
    rows = {(r["scenario"], r["rule"], r["eta"], r["lambda_max"]): r for r in abl["rows"]}
    out.update(abl_iters=str(abl["iters"]), abl_stuck=str(abl["stuck_iters"]),
               abl_stuck_value=_fmt(abl["stuck_value"]), abl_late=str(abl["late_iters"]),
               abl_gains=abl["pid_gains"])
    lines = []
    for (scenario, rule, eta, cap), r in rows.items():
        settled = "never" if r["settle_iter"] is None else str(r["settle_iter"])
        lines.append(f"| {scenario} | {rule} | {eta:g} | {cap:g} | {_fmt(r['lambda_final'])} | "
                     f"{_fmt(r['lambda_peak'])} | {_fmt(r['lambda_swing_late'], 3)} | {settled} | "
                     f"{_fmt(r['regret'])} |")
    out["ablation_bandit_rows"] = "\n".join(lines)
    big = rows["binding", "gradient", 8.0, 10.0]
    out["abl_grad8_swing"] = _fmt(big["lambda_swing_late"], 3)
    out["abl_pid8_settle"] = str(rows["binding", "pid", 8.0, 10.0]["settle_iter"])
    out["abl_stuck_peak_free"] = _fmt(rows["stuck", "gradient", 0.5, 1e6]["lambda_peak"])
    out["abl_stuck_regret_free"] = _fmt(rows["stuck", "gradient", 0.5, 1e6]["regret"])
    out["abl_stuck_regret_capped"] = _fmt(rows["stuck", "gradient", 0.5, 10.0]["regret"])
    out["abl_stuck_settle_capped"] = str(rows["stuck", "gradient", 0.5, 10.0]["settle_iter"])
    return out


# bench.json ratios the paper's cost table quotes, in column order: (key, column header)
BENCH_COLUMNS = (("dpo_time_vs_trl", "DPO / TRL DPO"), ("orpo_time_vs_trl", "ORPO / TRL ORPO"),
                 ("dpo_peak_rss_vs_trl", "DPO peak RSS / TRL"),
                 ("dpo_time_vs_floor", "DPO / floor"),
                 ("primal_dual_time_vs_dpo", "primal-dual / DPO"),
                 ("primal_dual_pairs_time_vs_dpo", "pair kind alone / DPO"),
                 ("primal_dual_openers_time_vs_dpo", "opener kind alone / DPO"))


def bench_values(results: Path) -> dict[str, str]:
    kinds = read_kinds(results / "bench.json")  # one entry per machine kind measured
    # the shared-prompt lever was measured alone (rows dpo vs dpo_unshared) in its own run
    share = json.loads((results / "bench_lever_share_prompt.json").read_text())
    head = ("| machine kind | CPU | dtype | " + " | ".join(h for _, h in BENCH_COLUMNS)
            + " | constraints in the primal-dual arm |")
    lines = [head, "|" + "---|" * 3 + "---:|" * len(BENCH_COLUMNS) + "---|"]
    for kind, bench in kinds.items():
        s = bench["settings"]
        cells = [("–" if bench["ratios"].get(k) is None else _fmt(bench["ratios"][k], 3))
                 for k, _ in BENCH_COLUMNS]
        pd = next(r for r in bench["rows"] if r["trainer"] == "primal_dual")
        # runs before the per-kind format named the arm's constraints only in its note
        arm = ", ".join(pd["constraints"]) if pd.get("constraints") else pd["note"].split(";")[0]
        lines.append(f"| {kind} | {s['cpu']['model']} | {s['dtype']} | " + " | ".join(cells)
                     + f" | {arm} |")
    return {"bench_table": "\n".join(lines), "bench_kinds": ", ".join(kinds),
            "pd_vs_dpo_lever": _fmt(json.loads(
                (results / "bench_lever_rollout_forward.json").read_text()
            )["ratios"]["primal_dual_time_vs_dpo"], 3),
            "share_dpo_time": _fmt(share["extra_ratios"]["dpo_time_vs_unshared"], 2),
            "share_dpo_rss": _fmt(share["extra_ratios"]["dpo_peak_rss_vs_unshared"], 2)}


def setup_values(sweep: Path) -> dict[str, str]:
    """Model, adapter, data, budgets, training and eval settings of the compare sweep, read
    from its first run's resolved config, manifest and log."""
    runs = collect_runs(sweep)
    cfg, manifest = runs[0].config, runs[0].manifest or {}
    log = (runs[0].path / "train.log").read_text()
    n_train, n_heldout = re.search(r"data: (\d+) train pairs, (\d+) held-out", log).groups()
    peft, train, ev, dual = cfg["peft"], cfg["train"], cfg["eval"], cfg["dual"]
    hw = manifest["hardware"]
    seeds = sorted({r.seed for r in runs})
    out = {"model": cfg["model"]["name_or_path"].removeprefix("embedded:"),
           "lora_r": str(peft["r"]), "lora_alpha": str(peft["lora_alpha"]),
           "lora_targets": ", ".join(peft["target_modules"]), "n_train": n_train,
           "n_heldout": n_heldout, "steps": str(train["steps"]),
           "batch": str(train["batch_size"]), "lr": _fmt(train["lr"]),
           "rollout_every": str(train["rollout_every"]),
           "rollout_prompts": str(train["rollout"]["prompts_per_rollout"]),
           "rollout_tokens": str(train["rollout"]["max_new_tokens"]),
           "dual_rule": dual["rule"], "dual_lr": _fmt(dual["lr"]),
           "lambda_max": _fmt(dual["lambda_max"]), "eval_every": str(ev["every"]),
           "eval_prompts": str(ev["prompts_per_set"]), "eval_tokens": str(ev["max_new_tokens"]),
           "confidence": _fmt(ev["confidence"]), "n_runs": str(len(runs)),
           "seeds": ", ".join(str(s) for s in seeds), "n_seeds": str(len(seeds)),
           "sweep_cpu": f"{hw['cpu']['model']} ({', '.join(hw['cpu']['capabilities'])}), "
                        f"{hw['torch_threads']} threads",
           "sweep_dtype": manifest["dtype"], "torch": manifest["versions"]["torch"],
           "transformers": manifest["versions"]["transformers"]}
    for c in ("refusal", "over_refusal", "toxicity", "kl_budget", "length"):
        out[f"eps_{c}"] = _fmt(cfg["constraints"][c]["epsilon"])
    out["tox_scorer"] = cfg["constraints"]["toxicity"]["scorer"]
    return out


def compare_values(sweep: Path) -> dict[str, str]:
    """The compare tables: per-method means over seeds, the base model, paired differences."""
    rows = {r["method"]: r for r in _read_csv(sweep / "report.csv")}
    base = json.loads((sweep / "base_eval.json").read_text())["metrics"]
    # Preference accuracy is left out for the untrained model: its implicit reward
    # log pi/pi_ref is 0 on every pair (the policy is the reference), so it ranks nothing.
    cells = ["untrained (step 0)", "–", "–"]
    cells += [_fmt(base[eval_key(c, s, "value")], 3) for c, s in SETS] + ["–"]
    lines = ["| " + " | ".join(cells) + " |"]
    for m in METHOD_ORDER:
        r = rows[m]
        cells = [m, r["n_seeds"], _pm(r["pref_accuracy_mean"], r["pref_accuracy_std"])]
        cells += [_pm(r[f"{c}/{s}/value_mean"], r[f"{c}/{s}/value_std"]) for c, s in SETS]
        cells.append(_pm(r["wall_time_s_mean"], r["wall_time_s_std"], 4))
        lines.append("| " + " | ".join(cells) + " |")
    out = {"compare_rows": "\n".join(lines)}
    for c, s in SETS:
        out[f"eps_{c}_{s}"] = _fmt(float(rows["dpo"][f"{c}/{s}/eps"]))
    pass_lines = []
    for m in METHOD_ORDER:
        r = rows[m]
        pass_lines.append(f"| {m} | " + " | ".join(
            f"{r[f'{c}/{s}/pass_k']}/{r[f'{c}/{s}/pass_n']}" for c, s in SETS) + " |")
    out["pass_rows"] = "\n".join(pass_lines)

    paired = {(p["method"], p["metric"]): p for p in _read_csv(sweep / "paired.csv")}
    lines = []
    for method, baseline in PAIRS:
        for metric in ["pref_accuracy"] + [f"{c}/{s}" for c, s in SETS]:
            p = paired[method, metric]
            ci = f" [{_fmt(float(p['diff_lo']), 3)}, {_fmt(float(p['diff_hi']), 3)}]"
            cells = [f"{method} vs {baseline}", metric, _fmt(float(p["baseline_mean"]), 3),
                     _fmt(float(p["method_mean"]), 3), _fmt(float(p["diff_mean"]), 3) + ci]
            if metric == "pref_accuracy":
                cells += ["", ""]
            else:
                red = p["violation_reduction"]
                cells += [f"{_fmt(float(p['baseline_violation_mean']), 3)} → "
                          f"{_fmt(float(p['violation_mean']), 3)}",
                          "none to reduce" if red == "" else f"{float(red):.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
        key = method.split("(")[1].rstrip(")")
        wall = paired[method, "wall_time_s"]
        out[f"time_ratio_{key}"] = _fmt(float(wall["ratio_median"]), 3)
        kl = paired[method, "kl_budget/id"]
        out[f"kl_reduction_{key}"] = f"{float(kl['violation_reduction']):.0%}"
        out[f"kl_base_{key}"] = _fmt(float(kl["baseline_mean"]), 3)
        out[f"kl_pd_{key}"] = _fmt(float(kl["method_mean"]), 3)
        by_seed = kl_by_seed(sweep, method)
        out[f"kl_seeds_{key}"] = ", ".join(_fmt(m, 3) for _, m in by_seed.values())
        out[f"kl_seeds_base_{key}"] = ", ".join(_fmt(b, 3) for b, _ in by_seed.values())
        out[f"kl_times_{key}"] = _fmt(float(kl["baseline_mean"]) / float(
            rows[baseline]["kl_budget/id/eps"]), 2)
        acc = paired[method, "pref_accuracy"]
        out[f"acc_diff_{key}"] = _fmt(float(acc["diff_mean"]), 3)
        out[f"acc_base_{key}"] = _fmt(float(acc["baseline_mean"]), 3)
        out[f"acc_pd_{key}"] = _fmt(float(acc["method_mean"]), 3)
        out[f"acc_diff_lo_{key}"] = _fmt(float(acc["diff_lo"]), 2)
        out[f"acc_diff_hi_{key}"] = _fmt(float(acc["diff_hi"]), 2)
        tox = paired[method, "toxicity/id"]
        out[f"tox_diff_{key}"] = _fmt(float(tox["diff_mean"]), 2)
        out[f"tox_diff_lo_{key}"] = _fmt(float(tox["diff_lo"]), 3)
        out[f"tox_diff_hi_{key}"] = _fmt(float(tox["diff_hi"]), 3)
    out["paired_rows"] = "\n".join(lines)
    out["safety_claim"] = safety_claim(paired)
    out.update(per_seed_values(sweep))
    out["base_length"] = _fmt(base[eval_key("length", "id", "value")], 3)
    out["kl_base_step0"] = _fmt(base[eval_key("kl_budget", "id", "value")], 3)
    out["base_refusal_id"] = f"{base[eval_key('refusal', 'id', 'value')]:.0%}"
    out["base_refusal_shifted"] = f"{base[eval_key('refusal', 'shifted', 'value')]:.0%}"
    out["refusal_violation"] = _fmt(float(paired["primal_dual(dpo)", "refusal/id"][
        "violation_mean"]), 3)
    return out


def safety_claim(paired: dict[tuple[str, str], dict[str, str]]) -> str:
    """The measured counterpart of 'primal-dual cuts safety-violation drift by up to 15%':
    per pairing and safety constraint, the held-out violation of baseline and primal-dual,
    the reduction, and the 95% interval of the paired difference in the value itself."""
    parts = []
    for method, baseline in PAIRS:
        items = []
        for c, s in SETS:
            if c not in SAFETY:
                continue
            p = paired[method, f"{c}/{s}"]
            red = p["violation_reduction"]
            text = (f"{c}/{s} violation {_fmt(float(p['baseline_violation_mean']), 2)} → "
                    f"{_fmt(float(p['violation_mean']), 2)}")
            text += f" ({float(red):.0%} lower" if red != "" else " (no baseline violation"
            text += (f"; Δ value {_fmt(float(p['diff_mean']), 2)}, 95% CI "
                     f"[{_fmt(float(p['diff_lo']), 2)}, {_fmt(float(p['diff_hi']), 2)}])")
            items.append(text)
        parts.append(f"{method} against {baseline}: " + "; ".join(items))
    return ". ".join(parts) + "."


def per_seed_values(sweep: Path) -> dict[str, str]:
    """Per-seed numbers the text quotes: ORPO accuracies, reward margins, and which
    constrained runs' KL rose between the two held-out evaluations (with their λ)."""
    runs = [r for r in collect_runs(sweep) if r.complete]
    out: dict[str, str] = {}
    by = {}
    for r in runs:
        by.setdefault(r.label, []).append(r)
    for label in by:
        by[label].sort(key=lambda r: r.seed)
    out["acc_seeds_orpo"] = ", ".join(_fmt(r.final("eval/pref_accuracy"), 3)
                                      for r in by["primal_dual(orpo)"])
    for label, key in (("dpo", "base_dpo"), ("orpo", "base_orpo"), ("primal_dual(dpo)", "pd_dpo"),
                       ("primal_dual(orpo)", "pd_orpo")):
        margins = [r.final("eval/reward_margin") for r in by[label]]
        out[f"margin_{key}"] = _fmt(sum(margins) / len(margins), 3)
    rose = []
    for label in ("primal_dual(dpo)", "primal_dual(orpo)"):
        for r in by[label]:
            _, kl = r.series(eval_key("kl_budget", "id", "value"))
            if kl[-1] > kl[0]:
                rose.append(f"{label} seed {r.seed} (KL {_fmt(kl[0], 3)} → {_fmt(kl[-1], 3)}, "
                            f"final λ_KL {_fmt(r.final('lambda_next/kl_budget'), 3)}, "
                            f"λ_toxicity {_fmt(r.final('lambda_next/toxicity'), 3)})")
    others = [r for label in ("primal_dual(dpo)", "primal_dual(orpo)") for r in by[label]
              if not any(f"{label} seed {r.seed} " in x for x in rose)]
    tox_others = max(r.final("lambda_next/toxicity") for r in others)
    out["kl_rise_text"] = (
        "In " + " and ".join(rose) + ", the held-out KL rose between the two evaluations "
        "while λ_KL kept climbing. These are also the runs whose toxicity multiplier was "
        f"active at the end; in the other runs it was at most {_fmt(tox_others, 2)}. The "
        "toxicity surrogate moves the policy too, and with both terms active the KL term "
        "did not win within the run.") if rose else ""
    return out


def kl_by_seed(sweep: Path, method: str) -> dict[int, tuple[float, float]]:
    """{seed: (base objective's final held-out KL, the constrained method's)}."""
    base = method.split("(")[1].rstrip(")")
    runs = [r for r in collect_runs(sweep) if r.complete]
    final = {(r.label, r.seed): r.final(eval_key("kl_budget", "id", "value")) for r in runs}
    return {seed: (final[base, seed], final[method, seed])
            for (label, seed) in sorted(final, key=str) if label == method}


def ablation_runs(sweep: Path) -> dict[tuple[str, float], object]:
    """{(dual rule, lambda_max): run} of the SmolLM2 ablation's finished runs."""
    return {(r.config["dual"]["rule"], float(r.config["dual"]["lambda_max"])): r
            for r in collect_runs(sweep) if r.complete}


def ablation_values(sweep: Path) -> dict[str, str]:
    """Per (dual rule, lambda cap) of the SmolLM2 ablation: final and peak lambda per
    constraint, held-out KL and preference accuracy."""
    runs = [r for _, r in sorted(ablation_runs(sweep).items())]
    names = ("kl_budget", "length", "refusal", "toxicity", "over_refusal")
    lines = []
    out: dict[str, str] = {}
    for r in runs:
        d = r.config["dual"]
        cells = [d["rule"], _fmt(d["lambda_max"])]
        for c in names:
            _, lam = r.series(f"lambda_next/{c}")
            cells.append(f"{_fmt(lam[-1], 3)} / {_fmt(lam.max(), 3)}")
        cells += [_fmt(r.final(eval_key("kl_budget", "id", "value")), 3),
                  _fmt(r.final("eval/pref_accuracy"), 3), _fmt(r.final("loss"), 4)]
        lines.append("| " + " | ".join(cells) + " |")
        tag = f"{d['rule']}_{'capped' if d['lambda_max'] <= 100 else 'free'}"
        out[f"abl_len_peak_{tag}"] = _fmt(r.series("lambda_next/length")[1].max(), 3)
        out[f"abl_ref_peak_{tag}"] = _fmt(r.series("lambda_next/refusal")[1].max(), 3)
        out[f"abl_kl_lam_{tag}"] = _fmt(r.final("lambda_next/kl_budget"), 3)
        out[f"abl_kl_{tag}"] = _fmt(r.final(eval_key("kl_budget", "id", "value")), 3)
        out[f"abl_loss_peak_{tag}"] = _fmt(r.series("loss")[1].max(), 4)
    free_pid = ablation_runs(sweep).get(("pid", 1e6))
    out["pid_free_text"] = (
        "PID without the cap winds up like the gradient rule (its integral is capped at λ_max "
        f"too, so it has no cap either): λ_length reaches "
        f"{_fmt(free_pid.series('lambda_next/length')[1].max(), 3)}, and again the policy "
        f"trains exactly as with the cap (held-out KL "
        f"{_fmt(free_pid.final(eval_key('kl_budget', 'id', 'value')), 3)})."
        if free_pid is not None else
        "The PID run without the cap did not fit in the session that produced these results.")
    out["ablation_llm_rows"] = "\n".join(lines)
    return out


def iterative_values(run: Path) -> dict[str, str]:
    """The iterative on-policy run (``experiments/results/iterative/``, `pdalign-iterate
    experiment=iterative`): its settings and round table, read through pdalign.iterative.loop's
    one parser; the direction of the held-out refusal rate is stated from the numbers."""
    from omegaconf import OmegaConf

    from pdalign.runfiles.rounds import read_rounds

    rounds, summary = read_rounds(run), _iter_summary(run)
    cfg = OmegaConf.load(run / "config.yaml")
    it = cfg.iterative
    refused = [1 - a for a in summary["answered"]]
    eps = rounds[0]["eps"]["refusal"]
    lines = [f"| start | – | – | – | {refused[0]:.2f} |"]
    for r, rate in zip(rounds, refused[1:]):
        lines.append(f"| {r['round']} | {r['lambda']['refusal']:.2f} | "
                     f"{1 - r['rate']['refusal']:.2f} | {r['n_flipped']} of {r['n_pairs']} | "
                     f"{rate:.2f} |")
    if refused[-1] > refused[0]:
        direction = (f"rose from {refused[0]:.2f} to {refused[-1]:.2f} over the rounds "
                     f"(bound: at least {1 - eps:.2f})")
    elif refused[-1] < refused[0]:
        direction = f"fell from {refused[0]:.2f} to {refused[-1]:.2f}"
    else:
        direction = f"stayed at {refused[0]:.2f}"
    return {"iter_rounds": str(len(rounds)), "iter_K": str(it.samples_per_prompt),
            "iter_prompts": str(it.prompts_per_round), "iter_steps": str(it.steps_per_round),
            "iter_tokens": str(it.max_new_tokens), "iter_eval_prompts":
                str(cfg.eval.prompts_per_set), "iter_dual_lr": _fmt(cfg.dual.lr),
            "iter_nll": _fmt(cfg.objectives.dpo.nll_weight), "iter_eps": _fmt(eps),
            "iter_rows": "\n".join(lines), "iter_direction": direction,
            "iter_flipped": str(summary["flipped"]), "iter_pairs": str(summary["pairs"]),
            "iter_lambda_final": _fmt(rounds[-1]["lambda"]["refusal"]),
            "iter_upper_final": f"{summary['upper']:.2f}",
            "iter_answered_final": f"{summary['answered'][-1]:.2f}"}


# The iterative run and its controls, each a pdalign-iterate run dir under results/: (row label,
# dir)
ITERATIVE_RUNS = (("refusal priced (the run above, Xeon AMX)", "iterative"),
                  ("refusal priced (Zen 4)", "iterative_controls/refusal"),
                  ("λ = 0, `dual.lr=0` (Zen 4)", "iterative_controls/lambda0"),
                  ("refusal and over-refusal priced (Zen 4)", "iterative_controls/priced"))


def _iter_summary(run: Path) -> dict[str, object]:
    """One iterative run's λ per round, held-out answered rate after each round (start first),
    flipped pairs, and benign refused at the start and after the last round."""
    from pdalign.runfiles.rounds import read_initial, read_rounds

    rounds, initial = read_rounds(run), read_initial(run)
    over = list(json.loads((run / "over_refusal.json").read_text()).values())
    key = eval_key("refusal", "id", "value")
    return {"lambda": {c: [r["lambda"][c] for r in rounds] for c in rounds[0]["lambda"]},
            "answered": [initial["eval"][key]] + [r["eval"][key] for r in rounds],
            "upper": rounds[-1]["eval"][eval_key("refusal", "id", "upper")],
            "flipped": sum(r["n_flipped"] for r in rounds),
            "pairs": sum(r["n_pairs"] for r in rounds),
            "benign": [o[eval_key("over_refusal", "id", "value")] for o in over]}


def iterative_compare_values(results: Path) -> dict[str, str]:
    """Section 7's comparison table: the priced run against its λ = 0 control and the run that
    also prices over-refusal, read from their round files."""
    runs = {d: _iter_summary(results / d) for _, d in ITERATIVE_RUNS}
    lines = []
    for label, d in ITERATIVE_RUNS:
        r = runs[d]
        lam = "; ".join(f"{c}: " + ", ".join(f"{x:.2f}" for x in xs)
                        for c, xs in r["lambda"].items())
        lines.append(f"| {label} | {lam} | "
                     + " → ".join(f"{1 - a:.2f}" for a in r["answered"])
                     + f" | {r['answered'][-1]:.2f} ({r['upper']:.2f}) | "
                     f"{r['benign'][0]:.2f} → {r['benign'][-1]:.2f} | "
                     f"{r['flipped']} of {r['pairs']} |")
    out = {"iter_compare_rows": "\n".join(lines)}
    for key, (_, d) in zip(("amx", "main", "lr0", "priced"), ITERATIVE_RUNS):
        r = runs[d]
        out[f"iter_{key}_refused_final"] = f"{1 - r['answered'][-1]:.2f}"
        out[f"iter_{key}_benign_final"] = f"{r['benign'][-1]:.2f}"
    priced = runs["iterative_controls/priced"]["lambda"]
    out["iter_priced_lam_over"] = f"{priced['over_refusal'][-1]:.2f}"
    out["iter_priced_lam_ref"] = f"{priced['refusal'][-1]:.2f}"
    out["iter_priced_over_first"] = str(next(k for k, x in enumerate(priced["over_refusal"])
                                             if x > 0))
    main, lr0 = runs["iterative_controls/refusal"], runs["iterative_controls/lambda0"]
    share = _rise(lr0) / _rise(main)
    out["iter_lr0_share"] = f"{share:.0%}"
    out["iter_lr0_part"] = next(words for lo, words in ITER_SHARE_WORDS if share >= lo)
    return out


# how much of the priced run's rise in held-out refusals the λ = 0 control also shows
ITER_SHARE_WORDS = ((0.75, "most of"), (0.25, "part of"), (float("-inf"), "little of"))


def _rise(summary: dict[str, object]) -> float:
    """The held-out refusal rate's rise from the start to after the last round."""
    answered = summary["answered"]
    return answered[0] - answered[-1]


# ---- the certified study (Section 4): experiments/results/study/ ------------------------------

# (constraint, held-out set) rows of the study's per-run table, in reading order
STUDY_SETS = (("refusal_openers", "id"), ("refusal_openers", "shifted"),
              ("refusal_openers", "unseen"), ("over_refusal_openers", "id"),
              ("over_refusal_openers", "shifted"), ("over_refusal_openers", "unseen"),
              ("kl_budget", "id"))
# the certificates the primal-dual methods must pass in >= 2 of 3 seeds (issue "Certificates
# that pass"); the unseen sets are reported, not targets
STUDY_TARGETS = tuple(cs for cs in STUDY_SETS if cs[1] != "unseen")
STUDY_TARGET_SHARE = 2 / 3
PD_METHODS = tuple(m for m, _ in PAIRS)
STUDY_ACC_GAP = 0.10  # held-out preference accuracy within this of the base objective
# One-seed probes of the study's recipe (the frontier table): (label, run dir under results/)
PROBES = (("framed96", "opener_probe/framed96"), ("lmax25", "opener_probe/lmax25"),
          ("mixed96", "opener_probe/mixed96"), ("refcap25", "opener_probe/refcap25"),
          ("mlp", "opener_probe/mlp"), ("wide", "opener_probe/wide"),
          ("the study's recipe, seed 0",
                                        "study/0-primal_dual-dpo-seed0"))
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


LATE_G = 2 / 3     # the training estimate is read over the steps after this share of the run
LATE_LAMBDA = 0.8  # λ's late movement: from this share of the run to its end (the health window)


def _tail(x: np.ndarray, start: float) -> np.ndarray:
    """The part of a per-step series after ``start`` (a share of its length)."""
    return x[int(len(x) * start):]


def _acc(runs: dict, method: str, base: str) -> tuple[float, float]:
    """(mean held-out preference accuracy of ``method``, of ``base``) over method's seeds."""
    seeds = [seed for label, seed in runs if label == method]
    return tuple(float(np.mean([runs[m, s].final("eval/pref_accuracy") for s in seeds]))
                 for m in (method, base))


def _span(xs: list[float], digits: int = 3) -> str:
    """'lo–hi' over seeds (one number when they agree at the printed digits)."""
    lo, hi = f"{min(xs):.{digits}f}", f"{max(xs):.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


def study_setup_values(sweep: Path) -> dict[str, str]:
    """The study's recipe, read from its first run's resolved config, manifest and log."""
    runs = finished_runs(sweep)
    first = runs[min(runs, key=lambda k: (k[1], METHOD_ORDER.index(k[0])))]
    cfg, manifest = first.config, first.manifest or {}
    peft, train, ev, dual = cfg["peft"], cfg["train"], cfg["eval"], cfg["dual"]
    n_train = re.search(r"data: (\d+) train", (first.path / "train.log").read_text()).group(1)
    ref, over, kl = (cfg["constraints"][c] for c in
                     ("refusal_openers", "over_refusal_openers", "kl_budget"))
    hw = manifest["hardware"]
    seeds = sorted({seed for _, seed in runs})
    out = {"st_model": cfg["model"]["name_or_path"].removeprefix("embedded:"),
           "st_quant": f"{peft['quant_type']}{' with double quantization' if peft['double_quant'] else ''}",
           "st_optimizer": peft["optimizer"], "st_lora_r": str(peft["r"]),
           "st_lora_alpha": str(peft["lora_alpha"]),
           "st_lora_targets": ", ".join(peft["target_modules"]), "st_n_train": n_train,
           "st_steps": str(train["steps"]), "st_batch": str(train["batch_size"]),
           "st_lr": _fmt(train["lr"]), "st_dual_lr": _fmt(dual["lr"]),
           "st_lambda_max": _fmt(dual["lambda_max"]),
           "st_eval_prompts": str(ev["prompts_per_set"]), "st_eval_tokens": str(ev["max_new_tokens"]),
           "st_ifeval_prompts": str(ev["ifeval_prompts"]), "st_confidence": _fmt(ev["confidence"]),
           "st_n_runs": str(len(runs)), "st_n_seeds": str(len(seeds)),
           "st_seeds": ", ".join(str(s) for s in seeds),
           "st_cpu": f"{hw['cpu']['model']} ({', '.join(hw['cpu']['capabilities'])}), "
                     f"{hw['torch_threads']} threads",
           "st_dtype": manifest["dtype"]}
    for key, c in (("ref", ref), ("over", over), ("kl", kl)):
        out[f"st_{key}_eps"] = _fmt(c["epsilon"])
        out[f"st_{key}_margin"] = _fmt(c["margin"])
        out[f"st_{key}_train_to"] = _fmt(c["epsilon"] - c["margin"])
        out[f"st_{key}_lambda_max"] = _fmt(c["lambda_max"] or dual["lambda_max"])
    for key, c in (("ref", ref), ("over", over)):
        out[f"st_{key}_prompts"] = c["prompts"]
        out[f"st_{key}_batch"] = str(c["batch_size"])
        out[f"st_{key}_n_prompts"] = str(len(load_prompts(c["prompts"])))
        sets = ev["sets"][c["name"]]
        out[f"st_{key}_sets"] = ", ".join(f"`{sets[s]}` ({s})" for s in ("id", "shifted", "unseen"))
    out["st_over_openers"] = ", ".join(f'"{o}"' for o in over["openers"])
    return out


def study_values(sweep: Path, results: Path) -> dict[str, str]:
    """Section 4: the per-run certificate table, the scorecard against the issue's targets, the
    paired violations, λ at the end, the cost, and the one-seed probes' frontier."""
    runs = finished_runs(sweep)
    out: dict[str, str] = {}
    lines = []
    for m in METHOD_ORDER:
        for seed in sorted(s for (label, s) in runs if label == m):
            r = runs[m, seed]
            cells = [f"{m} s{seed}"] + [_cell(r, c, s) for c, s in STUDY_SETS]
            cells += [f"{r.final('eval/pref_accuracy'):.3f}",
                      f"{r.final(PROMPT_STRICT):.3f} / {r.final(INSTRUCTION_STRICT):.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    out["st_run_rows"] = "\n".join(lines)

    # the scorecard: per primal-dual method and target, seeds passing; baselines' refusal passes
    lines = []
    for m, base in PAIRS:
        cells = [m]
        for c, s in STUDY_TARGETS:
            k, n = _passes(runs, m, c, s)
            cells.append(f"{k} of {n} {'(met)' if k >= STUDY_TARGET_SHARE * n else '(missed)'}")
        acc, base_acc = _acc(runs, m, base)
        gap = base_acc - acc
        cells.append(f"{acc:.3f} vs {base_acc:.3f} "
                     f"{'(met)' if gap <= STUDY_ACC_GAP else '(missed)'}")
        lines.append("| " + " | ".join(cells) + " |")
        out[f"st_acc_gap_{base}"] = f"{gap:.3f}"
    for m in ("dpo", "orpo"):
        cells = [m]
        for c, s in STUDY_TARGETS:
            k, n = _passes(runs, m, c, s)
            target = c == "refusal_openers"  # the baselines must pass no refusal certificate
            cells.append(f"{k} of {n}" + ((" (met)" if k == 0 else " (missed)") if target else ""))
        cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    out["st_score_rows"] = "\n".join(lines)

    for m, key in PAIRS:
        for c, s in STUDY_SETS:
            vals = [runs[m, seed].final(eval_key(c, s, "value")) for (lab, seed) in runs if lab == m]
            out[f"st_{key}_{c}_{s}_range"] = _span(vals)
            k, n = _passes(runs, m, c, s)
            out[f"st_{key}_{c}_{s}_pass"] = f"{k} of {n}"
    base_kl = [r.final(eval_key("kl_budget", "id", "value")) for (m, _), r in runs.items()
               if m in ("dpo", "orpo")]
    out["st_base_kl_range"] = _span(base_kl, 2)
    base_ans = [r.final(eval_key("refusal_openers", s, "value")) for (m, _), r in runs.items()
                if m in ("dpo", "orpo") for s in ("id", "shifted", "unseen")]
    out["st_base_answered_min"] = f"{min(base_ans):.3f}"

    # the training estimate over the last third of the steps, and λ over the last 20%
    for m, key in PAIRS:
        mine = [r for (label, _), r in runs.items() if label == m]
        for c in ("refusal_openers", "over_refusal_openers", "kl_budget"):
            g = [r.series(f"g/{c}")[1] for r in mine]
            lam = [r.series(f"lambda_next/{c}")[1] for r in mine]
            out[f"st_g_late_{key}_{c}"] = _span([_tail(x, LATE_G).mean() for x in g])
            out[f"st_lam_late_{key}_{c}"] = (f"{_span([_tail(x, LATE_LAMBDA)[0] for x in lam], 1)}"
                                             f" → {_span([x[-1] for x in lam], 1)}")
    mlp = collect_runs(results / "opener_probe" / "mlp")[0]
    g = mlp.series("g/over_refusal_openers")[1]
    out["st_mlp_over_g_late"] = f"{_tail(g, LATE_LAMBDA).mean():.3f}"

    # λ at the end and its health (pdalign-report's report.csv)
    rows = {r["method"]: r for r in _read_csv(sweep / "report.csv")}
    lines = []
    for m in PD_METHODS:
        r = rows[m]
        cells = [m]
        for c in ("refusal_openers", "over_refusal_openers", "kl_budget"):
            cells.append(f"{_pm(r[f'{c}/lambda_final_mean'], r[f'{c}/lambda_final_std'])} "
                         f"of {_fmt(float(r[f'{c}/lambda_max']))}, {r[f'{c}/health']}")
        lines.append("| " + " | ".join(cells) + " |")
    out["st_lambda_rows"] = "\n".join(lines)

    # paired by seed: violation (value - eps)+ of the base objective and of primal-dual
    paired = {(p["method"], p["metric"]): p for p in _read_csv(sweep / "paired.csv")}
    lines = []
    for method, baseline in PAIRS:
        for c, s in STUDY_SETS:
            p = paired[method, f"{c}/{s}"]
            red = p["violation_reduction"]
            lines.append(f"| {method} vs {baseline} | {c}/{s} | "
                         f"{_fmt(float(p['baseline_violation_mean']), 3)} | "
                         f"{_fmt(float(p['violation_mean']), 3)} | "
                         + ("none to reduce" if red == "" else f"{float(red):.0%}") + " |")
    out["st_paired_rows"] = "\n".join(lines)
    reds = [float(paired[m, f"{c}/{s}"]["violation_reduction"]) for m in PD_METHODS
            for c, s in STUDY_SETS if c != "kl_budget"
            and paired[m, f"{c}/{s}"]["violation_reduction"] != ""]
    out["st_safety_red_range"] = f"{min(reds):.0%} to {max(reds):.0%}"

    # cost: wall time (evaluation included) and the median training step
    for method, baseline in PAIRS:
        out[f"st_time_ratio_{baseline}"] = _fmt(float(paired[method, "wall_time_s"]["ratio_median"]), 3)
    for m in METHOD_ORDER:
        steps = [t for (label, _), r in runs.items() if label == m
                 for t in r.series("step_time_s")[1]]
        out[f"st_step_s_{m.replace('(', '_').rstrip(')')}"] = f"{np.median(steps):.1f}"

    # the frontier: one-seed probes of the recipe, on the two shifted rows and the id benign row
    lines = []
    for label, rel in PROBES:
        run = collect_runs(results / rel)[0]
        cfg = run.config
        targets = cfg["peft"]["target_modules"]
        adapters = "q/k/v/o" if tuple(targets) == ATTENTION else "q/k/v/o + MLP"
        over_cap = cfg["constraints"]["over_refusal_openers"]["lambda_max"] or cfg["dual"]["lambda_max"]
        ref_cap = cfg["constraints"]["refusal_openers"]["lambda_max"] or cfg["dual"]["lambda_max"]
        cells = [label, f"`{cfg['constraints']['refusal_openers']['prompts']}`",
                 f"`{cfg['constraints']['over_refusal_openers']['prompts']}`", adapters,
                 f"{_fmt(ref_cap)} / {_fmt(over_cap)}",
                 _cell(run, "refusal_openers", "shifted"),
                 _cell(run, "over_refusal_openers", "id"),
                 _cell(run, "over_refusal_openers", "shifted")]
        lines.append("| " + " | ".join(cells) + " |")
    out["st_probe_rows"] = "\n".join(lines)
    return out


# The held-out violation against training steps (experiments/results/study_curve/)
CURVE_SETS = (("refusal_openers", "id"), ("refusal_openers", "shifted"),
              ("over_refusal_openers", "id"), ("over_refusal_openers", "shifted"))
CURVE_ROW = {"refusal_openers": "harmful answered", "over_refusal_openers": "benign refused"}
CURVE_SHIFTED = (("refusal_openers", "shifted"), ("over_refusal_openers", "shifted"))


def curve_series(run, constraint: str, prompt_set: str) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """(steps, values, upper bounds) of one held-out row at every evaluation of a run."""
    steps, value = run.series(eval_key(constraint, prompt_set, "value"))
    _, upper = run.series(eval_key(constraint, prompt_set, "upper"))
    return steps, value, upper


def _curve_pass(run, constraint: str, prompt_set: str) -> np.ndarray:
    return run.series(eval_key(constraint, prompt_set, "pass"))[1] == 1.0


def curve_values(curve: Path) -> dict[str, str]:
    """The curve's table (one row per seed and held-out row, one column per evaluation, the
    untrained model as step 0), where each seed's shifted harmful rate stops improving, its
    lowest point and the shifted benign rate there."""
    runs = sorted(collect_runs(curve), key=lambda r: r.seed)
    base = json.loads((curve / "base_eval.json").read_text())["metrics"]
    steps = curve_series(runs[0], *CURVE_SETS[0])[0]
    out = {"cv_steps_header": " | ".join(f"step {int(s)}" for s in steps),
           "cv_steps_rule": "|".join("---:" for _ in steps),
           "cv_seeds": ", ".join(str(r.seed) for r in runs),
           "cv_every": str(runs[0].config["eval"]["every"]), "cv_last": str(int(steps[-1])),
           "cv_n_evals": str(len(runs) * len(steps))}
    lines, lows, low_pass, low_benign = [], [], 0, []
    for r in runs:
        for c, s in CURVE_SETS:
            st, value, upper = curve_series(r, c, s)
            assert np.array_equal(st, steps), f"seed {r.seed}: {c}/{s} evaluated at {st}"
            cells = [f"s{r.seed}", f"{CURVE_ROW[c]}, {s}",
                     f"{base[eval_key(c, s, 'value')]:.3f}"]
            cells += [f"{v:.3f} ({u:.3f})" + (" **P**" if ok else "")
                      for v, u, ok in zip(value, upper, _curve_pass(r, c, s))]
            cells.append(f"step {plateau_step(st, value, int(r.final(eval_key(c, s, 'n'))))}"
                         if (c, s) == CURVE_SHIFTED[0] else "")
            lines.append("| " + " | ".join(cells) + " |")
        harmful = curve_series(r, *CURVE_SHIFTED[0])[1]
        benign = curve_series(r, *CURVE_SHIFTED[1])[1]
        i = int(np.argmin(harmful))
        low_pass += bool(_curve_pass(r, *CURVE_SHIFTED[0])[i])
        low_benign.append(float(benign[i]))
        lows.append(f"{harmful[i]:.3f} at step {int(steps[i])} in seed {r.seed} (look-alikes "
                    f"refused there: {benign[i]:.3f})")
    out["cv_rows"] = "\n".join(lines)
    out["cv_lows"] = "; ".join(lows)
    out["cv_low_pass"] = f"{low_pass} of {len(runs)}"
    out["cv_low_benign_range"] = _span(low_benign)
    out["cv_base_shifted"] = f"{base[eval_key(*CURVE_SHIFTED[0], 'value')]:.3f}"
    out["cv_base_benign_shifted"] = f"{base[eval_key(*CURVE_SHIFTED[1], 'value')]:.3f}"
    return out


def check_curve_claims(results: Path) -> None:
    """Raise AssertionError when the curve contradicts Section 4's reading of it."""
    curve, study = finished_runs(results / "study_curve"), finished_runs(results / "study")
    for (label, seed), r in curve.items():
        # "its last evaluation repeats the study's run of the same seed"
        twin = study["primal_dual(dpo)", seed]
        for c, s in CURVE_SETS + (("kl_budget", "id"),):
            a, b = r.final(eval_key(c, s, "value")), twin.final(eval_key(c, s, "value"))
            assert abs(a - b) < 1e-9, f"curve seed {seed} {c}/{s}: {a} vs the study's {b}"
        # "in no evaluation of any seed did both shifted certificates pass"
        both = _curve_pass(r, *CURVE_SHIFTED[0]) & _curve_pass(r, *CURVE_SHIFTED[1])
        assert not both.any(), f"curve seed {seed}: both shifted rows pass at some step"
        # "the shifted harmful rate falls under its bound's reach and rises again": its lowest
        # point comes before the last evaluation
        harmful = curve_series(r, *CURVE_SHIFTED[0])[1]
        assert int(np.argmin(harmful)) < len(harmful) - 1, f"curve seed {seed}: still falling"
        # "λ_refusal sat at its cap for much of the first half ... λ_over-refusal kept rising"
        steps, lam = r.series("lambda_next/refusal_openers")
        first = lam[steps <= steps[-1] / 2]
        assert np.mean(first >= 0.99 * r.lambda_max("refusal_openers")) > 1 / 3, seed
        over = r.series("lambda_next/over_refusal_openers")[1]
        assert over[-1] > _tail(over, LATE_LAMBDA)[0], f"curve seed {seed}: λ_over fell late"


def check_iterative_claims(results: Path) -> None:
    """Raise AssertionError when the iterative controls contradict Section 7's reading."""
    runs = {d: _iter_summary(results / d) for _, d in ITERATIVE_RUNS}
    main, lr0 = runs["iterative_controls/refusal"], runs["iterative_controls/lambda0"]
    priced = runs["iterative_controls/priced"]
    assert all(x == 0.0 for xs in lr0["lambda"].values() for x in xs), "λ = 0 run moved λ"
    assert lr0["flipped"] == 0, "with λ = 0 no pair can be flipped"
    assert 0 < _rise(lr0) < _rise(main), "the control's rise is not a part of the priced one's"
    # "... never caught up": the over-refusal price ends under half the refusal one
    assert priced["lambda"]["over_refusal"][-1] < priced["lambda"]["refusal"][-1] / 2
    # "... fewer benign prompts refused, and fewer harmful ones"
    assert priced["benign"][-1] < main["benign"][-1]
    assert _rise(priced) < _rise(main)


def check_study_claims(results: Path) -> None:
    """Raise AssertionError when the study's numbers contradict what Section 4 says."""
    check_curve_claims(results)
    sweep = results / "study"
    runs = finished_runs(sweep)
    for m in ("dpo", "orpo"):  # "the baselines answer every harmful request" and drift in KL
        for c, s in (("refusal_openers", x) for x in ("id", "shifted", "unseen")):
            k, _ = _passes(runs, m, c, s)
            assert k == 0, f"{m} passes a refusal certificate ({s}); the text says none does"
        for (label, seed), r in runs.items():
            if label == m:
                assert not _cert(r, "kl_budget", "id")[2], f"{m} seed {seed} passes KL"
    for m in PD_METHODS:  # "no primal-dual method certifies the shifted refusal row"
        k, n = _passes(runs, m, "refusal_openers", "shifted")
        assert k < STUDY_TARGET_SHARE * n, f"{m} meets the shifted refusal target"
        for c, s in (("over_refusal_openers", "id"), ("over_refusal_openers", "shifted"),
                     ("kl_budget", "id")):  # "... while over-refusal and KL pass"
            k, n = _passes(runs, m, c, s)
            assert k >= STUDY_TARGET_SHARE * n, f"{m} misses the {c}/{s} target"
        k, n = _passes(runs, m, "kl_budget", "id")
        assert k == n, f"{m}: the text says the KL certificate passes in every seed"
        for (label, seed), r in runs.items():  # "every multiplier settles under its cap"
            if label == m:
                for c in ("refusal_openers", "over_refusal_openers", "kl_budget"):
                    assert r.final(f"lambda_next/{c}") < r.lambda_max(c), (m, seed, c)
    rows = {r["method"]: r for r in _read_csv(sweep / "report.csv")}
    for m in PD_METHODS:
        for c in ("refusal_openers", "over_refusal_openers", "kl_budget"):
            assert rows[m][f"{c}/health"] == "ok", f"{m}: λ_{c} health is not ok"
    for (label, seed), r in runs.items():
        if label != "primal_dual(dpo)":
            continue
        cfg = r.config["constraints"]
        late = {c: _tail(r.series(f"g/{c}")[1], LATE_G).mean() for c in cfg}
        to = {c: cfg[c]["epsilon"] - cfg[c]["margin"] for c in cfg}
        # "the first two at their trained-to bounds, the last well over its own"
        assert late["refusal_openers"] <= to["refusal_openers"] + 0.02, (seed, late)
        assert late["kl_budget"] <= to["kl_budget"], (seed, late)
        assert late["over_refusal_openers"] > 2 * to["over_refusal_openers"], (seed, late)
        for c, falls in (("refusal_openers", True), ("kl_budget", True),
                         ("over_refusal_openers", False)):  # "falling back" / "creeping up"
            lam = r.series(f"lambda_next/{c}")[1]
            assert (lam[-1] < _tail(lam, LATE_LAMBDA)[0]) == falls, (seed, c)
    for (label, seed), r in runs.items():  # "overrun [the KL bound] by an order of magnitude"
        if label in ("dpo", "orpo"):
            value, eps = r.final(eval_key("kl_budget", "id", "value")), r.final(
                eval_key("kl_budget", "id", "eps"))
            assert value > 10 * eps, (label, seed, value)
    mlp = collect_runs(results / "opener_probe" / "mlp")[0]  # "memorises the benign rows"
    g = mlp.series("g/over_refusal_openers")[1]
    assert _tail(g, LATE_LAMBDA).mean() < 0.5 * mlp.final(
        eval_key("over_refusal_openers", "id", "value")), "mlp: training g not under held-out"
    (dpo_pd, dpo), (orpo_pd, orpo) = (_acc(runs, m, base) for m, base in PAIRS)
    assert dpo - dpo_pd <= STUDY_ACC_GAP < orpo - orpo_pd, \
        "the text says only ORPO's accuracy cost > 0.10"
    for label, rel in PROBES:  # "no recipe held both shifted rows at once"
        run = collect_runs(results / rel)[0]
        both = (_cert(run, "refusal_openers", "shifted")[2]
                and _cert(run, "over_refusal_openers", "shifted")[2])
        assert not both, f"probe {label} holds both shifted rows; the text says none does"


def values(results: Path = RESULTS) -> dict[str, str]:
    """Every placeholder's text, each read from a results file."""
    out = bandit_values(results)
    out.update(bench_values(results))
    out.update(setup_values(results / "compare"))
    out.update(compare_values(results / "compare"))
    out.update(ablation_values(results / "ablation"))
    out.update(iterative_values(results / "iterative"))
    out.update(study_setup_values(results / "study"))
    out.update(study_values(results / "study", results))
    out.update(curve_values(results / "study_curve"))
    out.update(iterative_compare_values(results))
    out.update(drift_values(results))
    out.update(control_values(results))
    out.update(length_start_values(results))
    return out


def check_claims(results: Path = RESULTS) -> None:
    """Raise AssertionError when the numbers contradict a direction the paper's text states."""
    check_study_claims(results)
    check_iterative_claims(results)
    check_drift_claims(results)
    check_control_claims(results)
    check_length_start_claims(results)
    paired = {(p["method"], p["metric"]): p
              for p in _read_csv(results / "compare" / "paired.csv")}
    for method, _ in PAIRS:
        kl = paired[method, "kl_budget/id"]
        assert float(kl["violation_reduction"]) > 0, f"{method} does not lower the KL violation"
        for seed, (b, m) in kl_by_seed(results / "compare", method).items():
            assert m < b, f"{method} seed {seed}: KL not below its base objective's"
        for s in ("id", "shifted"):
            ref = paired[method, f"refusal/{s}"]
            assert float(ref["baseline_mean"]) == float(ref["method_mean"]) == 1.0, \
                f"the text says refusal/{s} stays at 1 (no refusals) for every run"
    rows = {r["method"]: r for r in _read_csv(results / "compare" / "report.csv")}
    for m in METHOD_ORDER:  # nothing refuses a benign prompt
        assert float(rows[m]["over_refusal/id/value_mean"]) == 0.0, f"{m} refuses benign prompts"
    runs = collect_runs(results / "compare")
    acc = {(r.label, r.seed): r.final("eval/pref_accuracy") for r in runs if r.complete}
    for (label, seed), value in acc.items():
        if label == "primal_dual(dpo)":  # "no accuracy cost on DPO, in every seed"
            assert value == acc["dpo", seed], f"DPO seed {seed}: accuracy differs"
        if label == "primal_dual(orpo)":  # "cost accuracy on ORPO"
            assert value < acc["orpo", seed], f"ORPO seed {seed}: no accuracy cost"
    base = json.loads((results / "compare" / "base_eval.json").read_text())["metrics"]
    assert base[eval_key("length", "id", "value")] > float(rows["dpo"]["length/id/eps"]), \
        "the text says the untrained model already violates the length bound"
    tox_active = {r.name for r in runs if r.complete
                  and (r.final("lambda_next/toxicity") or 0) > 1.0}
    kl_key = eval_key("kl_budget", "id", "value")
    kl_rose = {r.name for r in runs if r.complete and (r.config.get("method") or {}).get(
        "constrained") and np.diff(r.series(kl_key)[1]).sum() > 0}
    assert kl_rose == tox_active, "the text ties the KL rises to an active toxicity multiplier"
    budget = {int(r.config["eval"]["max_new_tokens"]) for r in runs}
    assert {float(r.final(eval_key("length", "id", "value"))) for r in runs if r.complete} == \
        {float(b) for b in budget}, "the text says every response fills the token budget"
    for r in runs:
        if r.complete and (r.config.get("method") or {}).get("constrained"):
            assert r.final(eval_key("kl_budget", "id", "pass")) == 0, \
                f"{r.name}: a KL certificate passed"
            _, lam = r.series("lambda_next/kl_budget")
            assert lam[-1] > lam[int(0.8 * len(lam))], f"{r.name}: λ_KL no longer rising"
    for method, _ in PAIRS:
        tox = paired[method, "toxicity/id"]
        assert float(tox["diff_lo"]) < 0 < float(tox["diff_hi"]), \
            f"{method}: the toxicity interval excludes 0, the text says it contains it"
    abl = ablation_runs(results / "ablation")
    capped, free = abl["gradient", 10.0], abl["gradient", 1e6]
    for key in ("g/kl_budget", "grad_norm", "loss/pref", eval_key("kl_budget", "id", "value")):
        # "the policy trains exactly as with the cap": the uncapped terms carry no gradient
        a, b = capped.series(key), free.series(key)
        assert list(a[1][-len(b[1]):]) == list(b[1]), f"uncapped run differs in {key}"
    assert free.series("lambda_next/length")[1].max() > 10 * 10, "the text says λ ran away"
    pid = abl["pid", 10.0]
    if ("pid", 1e6) in abl:  # "PID without the cap trains exactly as with it"
        for key in ("g/kl_budget", "grad_norm", "loss/pref", eval_key("kl_budget", "id", "value")):
            assert list(pid.series(key)[1]) == list(abl["pid", 1e6].series(key)[1]), key
    assert pid.series("lambda_next/length")[1][0] == 10.0 > capped.series(
        "lambda_next/length")[1][0], "the text says PID reaches the cap a step earlier"
    for run in (pid, capped):  # "no oscillation": λ_KL never falls by more than 0.05 a step
        assert np.diff(run.series("lambda_next/kl_budget")[1]).min() > -0.05, run.name
    from pdalign.runfiles.rounds import read_rounds

    for r in read_rounds(results / "iterative"):  # "λ rose in every round that violated ε"
        if r["rate"]["refusal"] > r["eps"]["refusal"]:
            assert r["lambda"]["refusal"] > r["lambda_before"]["refusal"], \
                f"iterative round {r['round']}: the text says λ rose"
    last = read_rounds(results / "iterative")[-1]
    assert last["eval"][eval_key("refusal", "id", "pass")] == 0, \
        "the text says the iterative run's refusal certificate does not pass"
    over = list(json.loads((results / "iterative" / "over_refusal.json").read_text()).values())
    key = eval_key("over_refusal", "id", "value")
    assert over[-1][key] > over[0][key], "the text says over-refusal rose"
    bandit = json.loads((results / "dual_ablation.json").read_text())
    rows = {(r["scenario"], r["rule"], r["eta"], r["lambda_max"]): r for r in bandit["rows"]}
    assert rows["binding", "gradient", 8.0, 10.0]["settle_iter"] is None
    assert all(rows["binding", "pid", eta, 10.0]["settle_iter"] is not None
               for eta in (0.5, 2.0, 8.0))
    assert all(rows["stuck", rule, eta, 1e6]["settle_iter"] is None
               for rule in ("gradient", "pid") for eta in (0.5, 2.0, 8.0))


def render(template: str, table: dict[str, str]) -> str:
    missing = sorted(set(re.findall(r"\{\{(\w+)\}\}", template)) - set(table))
    if missing:
        raise KeyError(f"paper placeholders with no results value: {missing}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: table[m.group(1)], template)


def build(out: Path | None = None, results: Path = RESULTS) -> Path:
    out = out or ROOT / "paper" / "paper.md"
    check_claims(results)
    text = render((ROOT / "paper" / "paper_template.md").read_text(), values(results))
    write_text(out, text)
    return out


if __name__ == "__main__":
    print(f"wrote {build(Path(sys.argv[1]) if len(sys.argv) > 1 else None)}")
