"""pdalign-report on a synthetic multirun dir whose every table value is worked by hand.

The sweep (20 training steps, held-out eval at steps 4, 12, 20; gaps of 8 steps):

| run | pref acc | refusal/id (ε 0.2) | kl_budget/id (ε 0.05) | wall s | λ refusal | λ kl |
|---|---|---|---|---|---|---|
| dpo s0 | 0.7 | 0.5 0.6 0.7 | 0.1 0.2 0.3 | 100 | – | – |
| dpo s1 | 0.8 | 0.4 0.5 0.6 | 0.1 0.2 0.3 | 120 | – | – |
| pd(dpo) s0 | 0.6 | 0.5 0.3 0.15 | 0.04 0.05 0.06 | 150 | min(t, 10) | 0.5 |
| pd(dpo) s1 | 0.7 | 0.6 0.2 0.25 | 0.04 0.05 0.06 | 170 | 0.1 t | 2.0 = its cap |
| pd(orpo) s0 | 0.5 | 0.3 0.3 0.3 | 0.04 0.04 0.04 | 90 | 0 | 0 |
| pd(orpo) s1 | crashed: no summary.json, torn last line, no manifest |

refusal/shifted is 0.1 everywhere (violation 0, passes). upper = value + 0.05 (refusal) or
value (kl); pass = upper ≤ ε. dual.lambda_max = 10, constraints.kl_budget.lambda_max = 2.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdalign.cli.report import main
from pdalign.reporting.runs import collect_runs
from pdalign.reporting.stats import lambda_health, plateau_step, signal_health, summarize
from pdalign.reporting.sweep import write_report

EVAL_STEPS = (4, 12, 20)
EPS = {"refusal": 0.2, "kl_budget": 0.05}
HASH_A = {"data/train.jsonl": "a" * 64, "data/heldout.jsonl": "b" * 64}
HASH_B = {"data/train.jsonl": "c" * 64, "data/heldout.jsonl": "b" * 64}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, *, method: str, objective: str, seed: int,
             pref: float, refusal: list[float], kl: list[float], wall: float | None,
             lam: dict | None = None, hashes: dict | None = HASH_A, merge_last_eval=False,
             torn=False, dual_lr: float = 0.5, steps: int = 20, g: float = 0.3,
             signal: dict | None = None) -> Path:
    """Write one run dir: config.yaml (JSON is YAML), metrics.jsonl, summary/manifest.

    ``signal``: {constraint: t -> {field: value}}, logged as ``signal/<c>/<field>`` each step.
    """
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed, "method": {"name": method, "objective": objective,
                                       "constrained": lam is not None},
              "dual": {"rule": "gradient", "lr": dual_lr, "lambda_max": 10.0},
              "constraints": {"refusal": {"epsilon": 0.2, "lambda_max": None},
                              "kl_budget": {"epsilon": 0.05, "lambda_max": 2.0}},
              "logging": {"group": name}}
    (run / "config.yaml").write_text(json.dumps(config))
    records = []
    for t in range(1, steps + 1):
        rec = {"step": t, "loss": 0.7, "loss/pref": 0.69, "lr": 1e-4, "grad_norm": 1.0,
               "tokens_per_s": 1000.0, "step_time_s": 0.1}
        for c, fn in (lam or {}).items():
            rec.update({f"lambda/{c}": fn(t), f"lambda_next/{c}": fn(t + 1), f"g/{c}": g,
                        f"eps/{c}": EPS[c], f"violation/{c}": g - EPS[c]})
        for c, fn in (signal or {}).items():
            rec.update({f"signal/{c}/{k}": v for k, v in fn(t).items()})
        records.append(rec)
    for i, t in enumerate(EVAL_STEPS):
        ev = {"step": t, "eval/pref_accuracy": pref - 0.1 * (2 - i), "eval/reward_margin": 1.0}
        sets = {("refusal", "id"): (refusal[i], 0.05), ("refusal", "shifted"): (0.1, 0.05),
                ("kl_budget", "id"): (kl[i], 0.0)}
        for (c, s), (value, slack) in sets.items():
            base, eps, upper = f"eval/{c}/{s}", EPS[c], value + slack
            ev.update({f"{base}/value": value, f"{base}/upper": upper, f"{base}/eps": eps,
                       f"{base}/violation": max(value - eps, 0.0),
                       f"{base}/pass": int(upper <= eps + 1e-12), f"{base}/n": 40})
        if merge_last_eval and t == steps:
            records[steps - 1].update(ev)  # a record that is both training and eval
        else:
            records.append(ev)
    lines = [json.dumps(r) for r in sorted(records, key=lambda r: r["step"])]
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"step": 21, "loss": 0.'
    (run / "metrics.jsonl").write_text(text)
    if wall is not None:
        (run / "summary.json").write_text(json.dumps({"steps": steps, "wall_time_s": wall,
                                                      "lambda": {}, "dtype": "fp32"}))
    if hashes is not None:
        (run / "manifest.json").write_text(json.dumps({"data_hashes": hashes}))
    return run


def build_sweep(root: Path) -> Path:
    kl = [0.1, 0.2, 0.3]
    make_run(root, "method=dpo,seed=0", method="dpo", objective="dpo", seed=0, pref=0.7,
             refusal=[0.5, 0.6, 0.7], kl=kl, wall=100.0)
    make_run(root, "method=dpo,seed=1", method="dpo", objective="dpo", seed=1, pref=0.8,
             refusal=[0.4, 0.5, 0.6], kl=kl, wall=120.0)
    kl = [0.04, 0.05, 0.06]
    make_run(root, "method=primal_dual,seed=0", method="primal_dual", objective="dpo", seed=0,
             pref=0.6, refusal=[0.5, 0.3, 0.15], kl=kl, wall=150.0,
             lam={"refusal": lambda t: float(min(t, 10)), "kl_budget": lambda t: 0.5})
    make_run(root, "method=primal_dual,seed=1", method="primal_dual", objective="dpo", seed=1,
             pref=0.7, refusal=[0.6, 0.2, 0.25], kl=kl, wall=170.0, merge_last_eval=True,
             lam={"refusal": lambda t: 0.1 * t, "kl_budget": lambda t: 2.0})
    zero = {"refusal": lambda t: 0.0, "kl_budget": lambda t: 0.0}
    # The orpo runs sit one level deeper, as when the sweep dir's parent is passed.
    make_run(root, "orpo/method=primal_dual,method.objective=orpo,seed=0", method="primal_dual",
             objective="orpo", seed=0, pref=0.5, refusal=[0.3] * 3, kl=[0.04] * 3, wall=90.0,
             lam=zero, hashes=HASH_B)
    make_run(root, "orpo/method=primal_dual,method.objective=orpo,seed=1", method="primal_dual",
             objective="orpo", seed=1, pref=0.5, refusal=[0.3] * 3, kl=[0.04] * 3, wall=None,
             lam=zero, hashes=None, torn=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own file at the sweep root
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep, reported once; returns (root, paths, rows by method)."""
    root = build_sweep(tmp_path_factory.mktemp("sweep"))
    paths = write_report(root)
    rows = {r["method"]: r for r in summarize(collect_runs(root))}
    return root, paths, rows


def test_labels_and_seed_counts(sweep):
    _, _, rows = sweep
    assert list(rows) == ["dpo", "primal_dual(dpo)", "primal_dual(orpo)"]
    assert [rows[m]["n_seeds"] for m in rows] == [2, 2, 1]
    assert [rows[m]["n_incomplete"] for m in rows] == [0, 0, 1]
    assert rows["dpo"]["seeds"] == "0;1"


def test_means_and_stds_by_hand(sweep):
    """Sample std (ddof=1) of two values a, b is |a − b|/√2.

    pref acc: dpo (0.7, 0.8) → 0.75 ± 0.0707; pd (0.6, 0.7) → 0.65 ± 0.0707.
    refusal/id final value: dpo (0.7, 0.6) → 0.65 ± 0.0707; pd (0.15, 0.25) → 0.2 ± 0.0707.
    wall: dpo (100, 120) → 110 ± 14.14; pd (150, 170) → 160 ± 14.14.
    One seed (pd(orpo)): mean only, std None.
    """
    _, _, rows = sweep
    d, p, o = rows["dpo"], rows["primal_dual(dpo)"], rows["primal_dual(orpo)"]
    s2 = 0.1 / math.sqrt(2)
    assert d["pref_accuracy_mean"] == pytest.approx(0.75)
    assert d["pref_accuracy_std"] == pytest.approx(s2)
    assert p["pref_accuracy_mean"] == pytest.approx(0.65)
    assert d["refusal/id/value_mean"] == pytest.approx(0.65)
    assert d["refusal/id/value_std"] == pytest.approx(s2)
    assert p["refusal/id/value_mean"] == pytest.approx(0.2)
    assert p["refusal/id/value_std"] == pytest.approx(s2)
    assert p["refusal/id/upper_mean"] == pytest.approx(0.25)
    assert p["refusal/id/eps"] == pytest.approx(0.2)
    assert d["wall_time_s_mean"] == pytest.approx(110.0)
    assert d["wall_time_s_std"] == pytest.approx(20 / math.sqrt(2))
    assert p["wall_time_s_mean"] == pytest.approx(160.0)
    assert o["wall_time_s_mean"] == pytest.approx(90.0) and o["wall_time_s_std"] is None


def test_pass_counts(sweep):
    """pass = upper ≤ ε at the last eval: refusal/id upper = value + 0.05.

    dpo 0.75, 0.65 > 0.2 → 0/2; pd 0.2 ≤ 0.2 (s0), 0.3 (s1) → 1/2.
    refusal/shifted 0.15 ≤ 0.2 → 2/2; kl_budget pd final 0.06 > 0.05 → 0/2.
    """
    _, _, rows = sweep
    d, p = rows["dpo"], rows["primal_dual(dpo)"]
    assert (d["refusal/id/pass_k"], d["refusal/id/pass_n"]) == (0, 2)
    assert (p["refusal/id/pass_k"], p["refusal/id/pass_n"]) == (1, 2)
    assert (p["refusal/shifted/pass_k"], p["refusal/shifted/pass_n"]) == (2, 2)
    assert (p["kl_budget/id/pass_k"], p["kl_budget/id/pass_n"]) == (0, 2)
    assert "kl_budget/shifted/pass_n" not in p  # kl_budget has no shifted set


def test_violation_drift_by_hand(sweep):
    """Violations (value − 0.2)⁺ at steps 4, 12, 20; area = Σ 8·(v_k + v_k+1)/2.

    dpo s0: 0.3 0.4 0.5 → final 0.5, max 0.5, area 8·0.35 + 8·0.45 = 6.4
    dpo s1: 0.2 0.3 0.4 → final 0.4, max 0.4, area 8·0.25 + 8·0.35 = 4.8
      → final 0.45 ± 0.0707, max 0.45 ± 0.0707, area 5.6 ± 1.131
    pd s0: 0.3 0.1 0   → final 0,    max 0.3, area 8·0.2 + 8·0.05 = 2.0
    pd s1: 0.4 0  0.05 → final 0.05, max 0.4, area 8·0.2 + 8·0.025 = 1.8
      → final 0.025 ± 0.0354, max 0.35 ± 0.0707, area 1.9 ± 0.1414
    kl_budget pd: (0.04 0.05 0.06 − 0.05)⁺ = 0 0 0.01 → final 0.01, max 0.01, area 0.04.
    """
    _, _, rows = sweep
    d, p = rows["dpo"], rows["primal_dual(dpo)"]
    s2 = 1 / math.sqrt(2)
    assert d["refusal/id/violation_final_mean"] == pytest.approx(0.45)
    assert d["refusal/id/violation_max_mean"] == pytest.approx(0.45)
    assert d["refusal/id/violation_area_mean"] == pytest.approx(5.6)
    assert d["refusal/id/violation_area_std"] == pytest.approx(1.6 * s2)
    assert p["refusal/id/violation_final_mean"] == pytest.approx(0.025)
    assert p["refusal/id/violation_final_std"] == pytest.approx(0.05 * s2)
    assert p["refusal/id/violation_max_mean"] == pytest.approx(0.35)
    assert p["refusal/id/violation_max_std"] == pytest.approx(0.1 * s2)
    assert p["refusal/id/violation_area_mean"] == pytest.approx(1.9)
    assert p["refusal/id/violation_area_std"] == pytest.approx(0.2 * s2)
    assert p["refusal/shifted/violation_area_mean"] == pytest.approx(0.0)
    assert p["kl_budget/id/violation_final_mean"] == pytest.approx(0.01)
    assert p["kl_budget/id/violation_max_mean"] == pytest.approx(0.01)
    assert p["kl_budget/id/violation_area_mean"] == pytest.approx(0.04)


def test_lambda_health_flags_and_final_lambda(sweep):
    """Window = steps > 0.8·20 = 16, i.e. 17..20.

    refusal: s0 λ = min(t, 10) = 10 = λ_max → pinned; s1 λ = 0.1 t rises → rising.
    kl_budget (own λ_max 2): s0 λ = 0.5 → ok; s1 λ = 2.0 → pinned (it would be ok under the
    global cap 10, so the per-constraint cap is used). pd(orpo): λ = 0 → ok.
    Final λ = lambda_next at step 20: refusal (10, 2.1) → 6.05; kl (0.5, 2.0) → 1.25.
    """
    _, _, rows = sweep
    p, o = rows["primal_dual(dpo)"], rows["primal_dual(orpo)"]
    assert (p["refusal/health_pinned"], p["refusal/health_rising"], p["refusal/health_ok"]) == (
        1, 1, 0)
    assert (p["kl_budget/health_pinned"], p["kl_budget/health_ok"]) == (1, 1)
    assert p["refusal/health"] == "pinned" and o["refusal/health"] == "ok"
    assert p["refusal/lambda_final_mean"] == pytest.approx(6.05)
    assert p["kl_budget/lambda_final_mean"] == pytest.approx(1.25)
    assert p["kl_budget/lambda_max"] == 2.0 and p["refusal/lambda_max"] == 10.0
    assert rows["dpo"]["refusal/health"] is None  # baselines have no multiplier


@pytest.mark.parametrize("lam, cap, flag", [
    ([1, 2, 10, 10, 10, 10, 10], 10.0, "pinned"),
    ([1, 2, 3, 9.95, 9.96, 9.97, 9.99], 10.0, "pinned"),  # ≥ 0.99·λ_max counts as the cap
    ([1, 2, 3, 4, 5, 6, 7], 10.0, "rising"),
    ([1, 2, 3, 4, 5, 8, 10], 10.0, "rising"),  # a ramp that reaches the cap inside the window
    ([1, 2, 3, 4, 5, 6, 7], None, "rising"),  # cap unknown: rising still detected
    ([3, 3, 3, 3, 3, 3, 3], 10.0, "ok"),
    ([1, 2, 3, 4, 5, 6, 5], 10.0, "ok"),  # fell once in the window
    ([0, 0, 0, 0, 0, 0, 0], 0.0, "ok"),  # λ_max = 0 switches a constraint off
])
def test_lambda_health_unit(lam, cap, flag):
    """Steps 1..7 at window_frac 0.5: the window is steps > 3.5, i.e. 4..7."""
    steps = np.arange(1, 8, dtype=float)
    assert lambda_health(steps, np.array(lam, dtype=float), cap, window_frac=0.5) == flag


def test_markdown_table(sweep):
    _, paths, _ = sweep
    md = paths["md"].read_text()
    dpo = next(line for line in md.splitlines() if line.startswith("| dpo |"))
    assert "0.75 ± 0.0707" in dpo and "0.65 ± 0.0707 (ε 0.2)" in dpo and "0/2" in dpo
    assert "110 ± 14.1" in dpo
    pd = next(line for line in md.splitlines() if line.startswith("| primal_dual(dpo) |"))
    assert "0.2 ± 0.0707 (ε 0.2) | 1/2" in pd
    assert "kl_budget: pinned 1/2; refusal: pinned 1/2, rising 1/2" in pd
    drift = [line for line in md.split("## Held-out violation drift")[1].splitlines()
             if line.startswith("| primal_dual(dpo) |")][0]
    assert "0.025 ± 0.0354 | 0.35 ± 0.0707 | 1.9 ± 0.141" in drift
    orpo = next(line for line in md.splitlines() if line.startswith("| primal_dual(orpo) |"))
    assert "| 1 (+1 incomplete) |" in orpo and "ok" in orpo
    for section in ("## Summary", "## Dual variables", "## Legend", "violation·steps"):
        assert section in md
    assert "6.05 ± 5.59 (10)" in md  # final λ refusal with its cap


def test_csv_columns_and_values(sweep):
    _, paths, rows = sweep
    with open(paths["csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    header = list(table[0])
    assert header[:9] == ["method", "n_seeds", "n_incomplete", "seeds", "data",
                          "pref_accuracy_mean", "pref_accuracy_std", "wall_time_s_mean",
                          "wall_time_s_std"]
    for col in ("refusal/id/value_mean", "refusal/id/value_std", "refusal/id/eps",
                "refusal/id/pass_k", "refusal/id/pass_n", "refusal/shifted/violation_area_mean",
                "kl_budget/id/violation_max_std", "refusal/lambda_final_mean",
                "refusal/lambda_max", "refusal/health_pinned", "refusal/health"):
        assert col in header
    assert not any(c.startswith("kl_budget/shifted") for c in header)
    by = {r["method"]: r for r in table}
    assert float(by["primal_dual(dpo)"]["refusal/id/violation_area_mean"]) == pytest.approx(1.9)
    assert by["primal_dual(dpo)"]["refusal/id/pass_k"] == "1"
    assert by["dpo"]["refusal/health"] == ""  # None → empty cell
    assert by["primal_dual(orpo)"]["pref_accuracy_std"] == ""


def test_pngs_are_valid(sweep):
    import matplotlib.image as mpimg

    _, paths, _ = sweep
    for key in ("lambda", "g_vs_eps", "heldout_violation"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000, key
        image = mpimg.imread(paths[key])
        assert image.shape[0] > 300 and image.shape[1] > 500
    leftovers = [p.name for p in paths["md"].parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # every write went through a temp file and a rename


def test_torn_line_and_incomplete_run(sweep):
    """The crashed run keeps its 20 + 3 records (the torn 21st is skipped), has no summary,
    and joins the aggregates only on request: pd(orpo) then has 2 seeds, wall time from 1."""
    root, paths, _ = sweep
    crashed = [r for r in collect_runs(root) if not r.complete]
    assert len(crashed) == 1 and crashed[0].last_step == 20 and len(crashed[0].records) == 23
    assert crashed[0].label == "primal_dual(orpo)"
    assert "## Incomplete runs" in paths["md"].read_text()
    rows = {r["method"]: r for r in summarize(collect_runs(root), include_incomplete=True)}
    assert rows["primal_dual(orpo)"]["n_seeds"] == 2
    assert rows["primal_dual(orpo)"]["wall_time_s_mean"] == pytest.approx(90.0)


def test_data_hash_grouping(sweep):
    """dpo and pd(dpo) share hash set A; pd(orpo) s0 uses B; the crashed run has none."""
    _, paths, rows = sweep
    assert rows["dpo"]["data"] == "A" and rows["primal_dual(dpo)"]["data"] == "A"
    assert rows["primal_dual(orpo)"]["data"] == "B"
    md = paths["md"].read_text()
    assert "- **A**: `heldout.jsonl` bbbbbbbbbbbb, `train.jsonl` aaaaaaaaaaaa" in md
    assert "**warning**: runs of this sweep used 2 different data sets" in md


def test_main_prints_table_and_writes_to_out(tmp_path, capsys):
    root = tmp_path / "sweep"
    make_run(root, "a", method="dpo", objective="dpo", seed=0, pref=0.7, refusal=[0.5] * 3,
             kl=[0.1] * 3, wall=10.0)
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--window-frac", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "| dpo | 1 |" in printed and f"wrote csv: {out / 'report.csv'}" in printed
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv",
                                                "heldout_violation.png"}
    assert not (root / "report.md").exists()


def test_no_constrained_runs_and_no_eval(tmp_path):
    """Baselines without eval records: no plots, a note for each, and the table still renders."""
    run = make_run(tmp_path, "r0", method="orpo", objective="orpo", seed=0, pref=0.7,
                   refusal=[0.5] * 3, kl=[0.1] * 3, wall=10.0)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    paths = write_report(tmp_path)
    assert set(paths) == {"md", "csv"}
    md = paths["md"].read_text()
    assert "lambda.png and g_vs_eps.png were not drawn" in md
    assert "heldout_violation.png was not drawn" in md
    assert "| orpo | 1 | – |" in md


def test_runs_differing_beyond_seed_get_separate_rows(tmp_path):
    """Two primal-dual runs with dual.lr 0.1 and 0.5 are different experiments."""
    lam = {"refusal": lambda t: 0.0}
    for i, lr in enumerate((0.1, 0.5)):
        make_run(tmp_path, f"lr{i}", method="primal_dual", objective="dpo", seed=0, pref=0.7,
                 refusal=[0.1] * 3, kl=[0.0] * 3, wall=1.0, lam=lam, dual_lr=lr)
    labels = [r["method"] for r in summarize(collect_runs(tmp_path))]
    assert labels == ["primal_dual(dpo) [dual.lr=0.1]", "primal_dual(dpo) [dual.lr=0.5]"]


def test_empty_dir_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"pdalign-report: error: no runs found under {tmp_path}: expected "
                   "subdirectories with metrics.jsonl (a Hydra multirun dir)\n")
    assert main([str(tmp_path / "missing")]) == 2


def test_runs_nested_by_a_path_override_are_found(tmp_path):
    """Hydra's override_dirname subdir nests a run as deep as a path in an override
    (data.train=/a/b/c.jsonl → five levels); a run's own subdirs are not searched."""
    deep = "data.train=/a/b/c.jsonl,method=dpo,seed=0"
    run = make_run(tmp_path, deep, method="dpo", objective="dpo", seed=0, pref=0.7,
                   refusal=[0.5] * 3, kl=[0.1] * 3, wall=1.0)
    (run / "checkpoints" / "x").mkdir(parents=True)
    (run / "checkpoints" / "x" / "metrics.jsonl").write_text("{}\n")
    assert [r.name for r in collect_runs(tmp_path)] == [deep]


def test_paired_comparison_by_hand(sweep):
    """pd(dpo) vs dpo, seeds 0 and 1 (t_{0.975, 1} = 12.7062):
    refusal/id finals dpo 0.7, 0.6 vs pd 0.15, 0.25 → diffs −0.55, −0.35: mean −0.45,
    sd 0.141421, half-width 12.7062 · 0.141421 / √2 = 1.27062; violations (ε 0.2) dpo 0.5, 0.4
    vs pd 0, 0.05 → 0.45 → 0.025, reduction 1 − 0.025/0.45 = 0.94444.
    kl_budget/id 0.3 vs 0.06 for both seeds → Δ −0.24 with a zero-width interval; violation
    0.25 → 0.01, reduction 0.96. pref acc 0.7, 0.8 vs 0.6, 0.7 → Δ −0.1. Wall time ratio
    (150/100 + 170/120)/2 = 1.458333. pd(orpo) has no orpo run to pair with."""
    from pdalign.reporting.stats import paired_comparison

    rows = {(r["method"], r["metric"]): r for r in paired_comparison(collect_runs(sweep[0]))}
    assert {m for m, _ in rows} == {"primal_dual(dpo)"}
    ref = rows["primal_dual(dpo)", "refusal/id"]
    assert (ref["baseline"], ref["n"], ref["seeds"]) == ("dpo", 2, "0;1")
    assert ref["baseline_mean"] == pytest.approx(0.65)
    assert ref["method_mean"] == pytest.approx(0.2)
    assert ref["diff_mean"] == pytest.approx(-0.45)
    assert ref["diff_lo"] == pytest.approx(-0.45 - 1.270620, abs=1e-5)
    assert ref["diff_hi"] == pytest.approx(-0.45 + 1.270620, abs=1e-5)
    assert ref["baseline_violation_mean"] == pytest.approx(0.45)
    assert ref["violation_mean"] == pytest.approx(0.025)
    assert ref["violation_reduction"] == pytest.approx(1 - 0.025 / 0.45)
    kl = rows["primal_dual(dpo)", "kl_budget/id"]
    assert kl["diff_lo"] == pytest.approx(-0.24) and kl["diff_hi"] == pytest.approx(-0.24)
    assert kl["violation_reduction"] == pytest.approx(0.96)
    shifted = rows["primal_dual(dpo)", "refusal/shifted"]
    assert shifted["baseline_violation_mean"] == 0 and shifted["violation_reduction"] is None
    assert rows["primal_dual(dpo)", "pref_accuracy"]["diff_mean"] == pytest.approx(-0.1)
    wall = rows["primal_dual(dpo)", "wall_time_s"]
    assert wall["ratio_mean"] == pytest.approx(1.458333, abs=1e-6)
    assert wall["ratio_median"] == pytest.approx(1.458333, abs=1e-6)  # two seeds: the mean


def test_report_writes_the_paired_table(sweep):
    _, paths, _ = sweep
    md = paths["md"].read_text()
    assert "## Constrained method vs its base objective (paired by seed)" in md
    assert "| primal_dual(dpo) | dpo | refusal/id | 2 | 0.65 | 0.2 | -0.45 [-1.72, 0.821] | " \
           "0.45 → 0.025 | 94% |" in md
    assert "primal_dual(dpo) trains in 1.46× the wall time of dpo" in md
    with open(paths["paired_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    kl = next(r for r in rows if r["metric"] == "kl_budget/id")
    assert float(kl["violation_reduction"]) == pytest.approx(0.96)


def test_same_files_in_another_checkout_are_the_same_data(tmp_path):
    """Runs of one sweep resumed from a different clone hash the same files under other paths."""
    moved = {f"/elsewhere/{k}": v for k, v in HASH_A.items()}
    for seed, hashes in ((0, HASH_A), (1, moved)):
        make_run(tmp_path, f"s{seed}", method="dpo", objective="dpo", seed=seed, pref=0.7,
                 refusal=[0.5] * 3, kl=[0.1] * 3, wall=10.0, hashes=hashes)
    (row,) = summarize(collect_runs(tmp_path))
    assert row["data"] == "A" and row["n_seeds"] == 2


def test_a_speed_only_key_added_later_does_not_split_a_method(tmp_path):
    """Seeds run before train.activation_checkpointing existed (no key) and after (0) are one
    method: the key changes memory and time, not the result. A real setting still splits."""
    for seed in (0, 1, 2):
        run = make_run(tmp_path, f"s{seed}", method="dpo", objective="dpo", seed=seed, pref=0.7,
                       refusal=[0.5] * 3, kl=[0.1] * 3, wall=10.0)
        config = json.loads((run / "config.yaml").read_text())
        if seed == 1:
            config["train"] = {"activation_checkpointing": 0, "lr": 5e-4}
        else:
            config["train"] = {"lr": 5e-4 if seed == 0 else 1e-3}
        (run / "config.yaml").write_text(json.dumps(config))
    labels = sorted(r.label for r in collect_runs(tmp_path))
    assert labels == ["dpo [train.lr=0.0005]", "dpo [train.lr=0.0005]", "dpo [train.lr=0.001]"]


# ---- rollout signal (signal/<c>/*) -------------------------------------------------------


def test_runs_without_signal_records_get_no_signal_columns(sweep):
    """The sweep above (like every result committed before signal logging) has no
    signal/<c>/* keys: no signal column, note or legend line, as before."""
    _, paths, rows = sweep
    assert not any("signal" in k or "at_budget" in k for row in rows.values() for k in row)
    md = paths["md"].read_text()
    assert "signal" not in md and "at budget" not in md


def build_signal_sweep(root: Path) -> Path:
    """refusal every sample costing 1 (ĝ = 1), 20 steps, window = steps 17..20:

    - pd(dpo) s0: flat_rollouts = t // 4 reaches 5 ≥ 3 at the end → no signal; at budget 1
      at every step → final 1, run mean 1;
    - pd(dpo) s1: spread 0.5 throughout, flat 0 → ok; at budget 0.25 for t ≤ 10, then 0.5 →
      final 0.5, run mean (10·0.25 + 10·0.5) / 20 = 0.375;
    - pd(orpo) s0: spread 0.5 up to step 16, then 0 (flat_rollouts only 1 at the end, under
      the threshold) → no signal by the window; at budget 0.
    Over seeds of pd(dpo): at budget final 0.75 ± sqrt(2·0.25²) = 0.354, run mean 0.6875.
    """
    lam = {"refusal": lambda t: 10.0, "kl_budget": lambda t: 0.0}
    common = {"refusal": [0.3] * 3, "kl": [0.04] * 3, "wall": 10.0, "lam": lam, "g": 1.0}
    make_run(root, "pd0", method="primal_dual", objective="dpo", seed=0, pref=0.6, **common,
             signal={"refusal": lambda t: {"spread": 0.0, "at_budget": 1.0,
                                           "flat_rollouts": float(t // 4)}})
    make_run(root, "pd1", method="primal_dual", objective="dpo", seed=1, pref=0.6, **common,
             signal={"refusal": lambda t: {"spread": 0.5, "at_budget": 0.25 if t <= 10 else 0.5,
                                           "flat_rollouts": 0.0}})
    make_run(root, "po0", method="primal_dual", objective="orpo", seed=0, pref=0.6, **common,
             signal={"refusal": lambda t: {"spread": 0.5 if t <= 16 else 0.0, "at_budget": 0.0,
                                           "flat_rollouts": 1.0 if t > 16 else 0.0}})
    return root


def test_signal_flag_at_budget_share_and_note(tmp_path):
    root = build_signal_sweep(tmp_path)
    runs = {r.name: r for r in collect_runs(root)}
    assert signal_health(runs["pd0"], "refusal") == ("no signal", 1.0)
    assert signal_health(runs["pd1"], "refusal") == ("ok", None)
    assert signal_health(runs["po0"], "refusal") == ("no signal", 1.0)
    assert signal_health(runs["pd0"], "kl_budget") is None  # a batch constraint logs none
    rows = {r["method"]: r for r in summarize(list(runs.values()))}
    p, o = rows["primal_dual(dpo)"], rows["primal_dual(orpo)"]
    assert (p["refusal/signal_none"], p["refusal/signal_n"], p["refusal/signal"]) == (
        1, 2, "no signal")
    assert (o["refusal/signal_none"], o["refusal/signal_n"]) == (1, 1)
    assert p["refusal/signal_cost"] == "1"
    assert p["refusal/at_budget_final_mean"] == pytest.approx(0.75)
    assert p["refusal/at_budget_final_std"] == pytest.approx(math.sqrt(2 * 0.25 ** 2))
    assert p["refusal/at_budget_run_mean"] == pytest.approx((1.0 + 0.375) / 2)
    assert "kl_budget/signal_n" not in p

    paths = write_report(root)
    md = paths["md"].read_text()
    pd = next(line for line in md.splitlines() if line.startswith("| primal_dual(dpo) |"))
    assert "refusal: pinned 2/2, no signal 1/2" in pd  # next to λ health in the summary
    dual = md.split("## Dual variables")[1]
    assert "| refusal signal | refusal at budget |" in dual
    assert "| pinned 2/2 | no signal 1/2 | 75% (run mean 69%) |" in dual
    assert ("primal_dual(dpo), refusal: no signal in 1/2 seeds: every sample costs 1 — the "
            "surrogate has zero gradient; use a pair set or widen the generation budget") in md
    assert "primal_dual(orpo), refusal: no signal in 1/1 seeds" in md
    assert "*signal* (rollout constraints)" in md
    with open(paths["csv"], newline="") as fh:
        table = {r["method"]: r for r in csv.DictReader(fh)}
    assert table["primal_dual(dpo)"]["refusal/signal"] == "no signal"
    assert float(table["primal_dual(dpo)"]["refusal/at_budget_final_mean"]) == 0.75


def test_signal_threshold_comes_from_the_run_config(tmp_path):
    """flat_rollouts ends at 5: no signal at the default threshold 3, ok at 6 (the spread is
    0.5 at the end, so the window does not flag it)."""
    run = make_run(tmp_path, "r", method="primal_dual", objective="dpo", seed=0, pref=0.6,
                   refusal=[0.3] * 3, kl=[0.04] * 3, wall=10.0, lam={"refusal": lambda t: 1.0},
                   signal={"refusal": lambda t: {"spread": 0.5, "at_budget": 0.0,
                                                 "flat_rollouts": float(t // 4)}})
    assert signal_health(collect_runs(tmp_path)[0], "refusal")[0] == "no signal"
    config = json.loads((run / "config.yaml").read_text())
    config["train"] = {"rollout": {"no_signal_after": 6}}
    (run / "config.yaml").write_text(json.dumps(config))
    assert signal_health(collect_runs(tmp_path)[0], "refusal") == ("ok", None)


# ---- plateau_step: where a held-out rate stops falling ----------------------------------------

STEPS = [24, 48, 72, 96]


@pytest.mark.parametrize("rates, n, want", [
    # 0.45 - sqrt(.45 * .55 / 100) = 0.400 > 0.35 still to come; from 0.35 (se 0.048) the 0.33
    # after it is within noise
    ([0.60, 0.45, 0.35, 0.33], 100, 72),
    ([0.90, 0.70, 0.50, 0.30], 210, 96),   # still falling by ~0.2 per evaluation: the last step
    ([0.30, 0.32, 0.40, 0.29], 210, 24),   # se at 0.30 on 210 is 0.032: 0.29 is within it
    ([0.30, 0.32, 0.40, 0.25], 210, 96),   # ... and 0.25 is not, from any earlier point
    ([0.00, 0.00, 0.00, 0.00], 50, 24),    # flat at zero
    ([0.02, 0.00, 0.00, 0.00], 50, 24),    # one prompt of 50 is the floor (1/n = 0.02) ...
    ([0.04, 0.00, 0.00, 0.00], 50, 48),    # ... two are past it (se at 0.04 is 0.028)
])
def test_plateau_step_hand_derived(rates, n, want):
    assert plateau_step(STEPS, rates, n) == want


def test_plateau_step_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        plateau_step([24, 48], [0.3], 210)
    with pytest.raises(ValueError, match="n = 0"):
        plateau_step(STEPS, [0.3] * 4, 0)
