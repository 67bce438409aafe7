"""The paper is built from experiments/results only: its numbers match the results files, and
the build refuses a text the numbers contradict."""

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
spec = importlib.util.spec_from_file_location("paper_build", ROOT / "paper" / "build.py")
paper_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_build)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    out = paper_build.build(tmp_path_factory.mktemp("paper") / "paper.md")
    return out.read_text()


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_no_placeholder_left_and_committed_paper_is_fresh(text):
    assert "{{" not in text
    assert (ROOT / "paper" / "paper.md").read_text() == text, "run `make paper`: stale paper.md"


def test_bandit_and_ablation_numbers(text):
    bandit = json.loads((RESULTS / "bandit_kkt.json").read_text())
    assert f"λ* = {bandit['lambda_star']:.6g}" in text
    for rule in ("gradient", "pid"):
        assert f"| {rule} | {bandit['lambda_final'][rule]:.6g} |" in text
    abl = json.loads((RESULTS / "dual_ablation.json").read_text())
    for r in abl["rows"]:
        settled = "never" if r["settle_iter"] is None else str(r["settle_iter"])
        assert (f"| {r['scenario']} | {r['rule']} | {r['eta']:g} | {r['lambda_max']:g} | "
                f"{r['lambda_final']:.4g} | {r['lambda_peak']:.4g} | "
                f"{r['lambda_swing_late']:.3g} | {settled} | {r['regret']:.4g} |") in text


def test_compare_tables_match_report_csv(text):
    rows = {r["method"]: r for r in _csv(RESULTS / "compare" / "report.csv")}
    for method in paper_build.METHOD_ORDER:
        r = rows[method]
        kl = f"{float(r['kl_budget/id/value_mean']):.3g} ± {float(r['kl_budget/id/value_std']):.2g}"
        line = next(x for x in text.splitlines() if x.startswith(f"| {method} | 3 |"))
        assert kl in line, (kl, line)
        assert f"| {r['kl_budget/id/pass_k']}/{r['kl_budget/id/pass_n']} |" in text
    base = json.loads((RESULTS / "compare" / "base_eval.json").read_text())["metrics"]
    row0 = next(x for x in text.splitlines() if x.startswith("| untrained (step 0) |"))
    assert f"| {base['eval/toxicity/id/value']:.3g} |" in row0


def test_paired_rows_and_headline_match_paired_csv(text):
    paired = {(p["method"], p["metric"]): p for p in _csv(RESULTS / "compare" / "paired.csv")}
    for method, baseline in paper_build.PAIRS:
        kl = paired[method, "kl_budget/id"]
        reduction = f"{float(kl['violation_reduction']):.0%}"
        assert f"{reduction} smaller KL violation" in text or f"{reduction} smaller" in text
        assert (f"| {method} vs {baseline} | kl_budget/id | {float(kl['baseline_mean']):.3g} | "
                f"{float(kl['method_mean']):.3g} | {float(kl['diff_mean']):.3g} "
                f"[{float(kl['diff_lo']):.3g}, {float(kl['diff_hi']):.3g}] |") in text
        wall = paired[method, "wall_time_s"]
        assert f"{float(wall['ratio_median']):.3g}x" in text
    # paired.csv is what pdalign-report computes from the committed runs
    from pdalign.reporting.runs import collect_runs
    from pdalign.reporting.stats import paired_comparison

    fresh = paired_comparison(collect_runs(RESULTS / "compare"))
    assert len(fresh) == len(paired)
    for row in fresh:
        committed = paired[row["method"], row["metric"]]
        for key, value in row.items():
            if isinstance(value, float):
                assert float(committed[key]) == pytest.approx(value, rel=1e-9), key


def test_ablation_rows_come_from_the_runs(text):
    from pdalign.reporting.runs import collect_runs

    runs = [r for r in collect_runs(RESULTS / "ablation") if r.complete]
    assert runs
    for r in runs:
        d = r.config["dual"]
        _, lam = r.series("lambda_next/length")
        cell = f"{lam[-1]:.3g} / {lam.max():.3g}"
        assert f"| {d['rule']} | {d['lambda_max']:.4g} | " in text
        assert cell in text


def _build_with_one_csv_edited(tmp_path, csv_name, where, column, value, error):
    """Copy the results, set ``column`` to ``value`` in the rows of ``csv_name`` matching
    ``where`` (column, text), and check the build stops with ``error`` and writes nothing."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / csv_name
    rows = _csv(path)
    for row in rows:
        if row[where[0]] == where[1]:
            row[column] = value
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(AssertionError, match=error):
        paper_build.build(tmp_path / "paper.md", results)
    assert not (tmp_path / "paper.md").exists()


def test_a_contradicted_claim_stops_the_build(tmp_path):
    """Flip one result: the text says primal-dual lowers the KL violation; make it higher."""
    _build_with_one_csv_edited(tmp_path, "compare/paired.csv", ("metric", "kl_budget/id"),
                               "violation_reduction", "-0.5", "does not lower the KL violation")


def test_an_unfilled_placeholder_is_an_error():
    with pytest.raises(KeyError, match="no_such_number"):
        paper_build.render("x = {{no_such_number}}", {})


def test_study_rows_come_from_each_runs_last_evaluation(text):
    runs = paper_build.finished_runs(RESULTS / "study")
    assert runs
    lines = text.splitlines()
    for (label, seed), run in runs.items():
        line = next(x for x in lines if x.startswith(f"| {label} s{seed} |"))
        for c, s in paper_build.STUDY_SETS:
            value, upper = (run.final(f"eval/{c}/{s}/{f}") for f in ("value", "upper"))
            passes = run.final(f"eval/{c}/{s}/pass") == 1.0
            assert f"{value:.3f} ({upper:.3f})" + (" **P**" if passes else "") in line, (c, s)
    # the scorecard's counts, re-read from certificates.md (written by experiments/certificates.py)
    blocks = (RESULTS / "study" / "certificates.md").read_text().split("\n## ")[1:]

    def verdicts(method_dir: str, row: str) -> list[bool]:
        out = []
        for block in blocks:
            if method_dir in block.splitlines()[0]:
                line = next(x for x in block.splitlines() if x.startswith(row))
                out.append(line.endswith("**pass** |"))
        return out

    for label, run_dir in (("primal_dual(dpo)", "-primal_dual-dpo-"),
                           ("primal_dual(orpo)", "-primal_dual-orpo-")):
        ref_id = verdicts(run_dir, "| refusal_openers | id |")
        shifted = verdicts(run_dir, "| refusal_openers | shifted |")
        assert len(ref_id) == len(shifted) == sum(1 for m, _ in runs if m == label)
        n = len(ref_id)
        assert (f"| {label} | {sum(ref_id)} of {n} (" in text
                and f" | {sum(shifted)} of {n} (missed) |" in text), label


def test_a_contradicted_study_claim_stops_the_build(tmp_path):
    """The text says every study multiplier has health ok; mark one pinned."""
    _build_with_one_csv_edited(tmp_path, "study/report.csv", ("method", "primal_dual(dpo)"),
                               "over_refusal_openers/health", "pinned 1/3", "health is not ok")


def test_curve_rows_come_from_every_evaluation(text):
    """Each curve cell is the run's value (upper bound) at that step, the base's at step 0."""
    curve = RESULTS / "study_curve"
    base = json.loads((curve / "base_eval.json").read_text())["metrics"]
    lines = text.splitlines()
    runs = paper_build.collect_runs(curve)
    assert len(runs) == 3
    for run in runs:
        for c, s in paper_build.CURVE_SETS:
            row = f"| s{run.seed} | {paper_build.CURVE_ROW[c]}, {s} | "
            line = next(x for x in lines if x.startswith(row))
            cells = [x.strip() for x in line.strip("|").split("|")]
            assert cells[2] == f"{base[f'eval/{c}/{s}/value']:.3f}"
            steps, values = run.series(f"eval/{c}/{s}/value")
            assert len(steps) == 4 and len(cells) == 8
            for cell, v, u in zip(cells[3:7], values, run.series(f"eval/{c}/{s}/upper")[1]):
                assert cell.startswith(f"{v:.3f} ({u:.3f})"), (run.seed, c, s, cell)


def test_a_contradicted_curve_claim_stops_the_build(tmp_path):
    """The text says no evaluation passes both shifted certificates; make seed 0's step-72
    evaluation pass the shifted benign row too."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "study_curve" / "0-primal_dual-dpo-seed0" / "metrics.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == 72 and "eval/over_refusal_openers/shifted/pass" in record:
            record["eval/over_refusal_openers/shifted/pass"] = 1.0
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match="both shifted rows pass"):
        paper_build.build(tmp_path / "paper.md", results)
    assert not (tmp_path / "paper.md").exists()


def test_drift_rows_come_from_each_runs_records_and_posthoc_evaluations(text):
    """Section 5: each run's last held-out toxicity and KL, IFEval from its posthoc.jsonl, and
    the step-0 curve cell from the base records (the base model, evaluated after training)."""
    runs = paper_build.finished_runs(RESULTS / "drift_toxicity")
    assert runs
    lines = text[text.index("## 5. Drift"):text.index("## 6. Cost")].splitlines()
    for (label, seed), run in runs.items():
        line = next(x for x in lines if x.startswith(f"| {label} s{seed} |"))
        for c in ("toxicity", "kl_budget"):
            value, upper = (run.final(f"eval/{c}/id/{f}") for f in ("value", "upper"))
            passes = run.final(f"eval/{c}/id/pass") == 1.0
            assert f"{value:.3f} ({upper:.3f})" + (" **P**" if passes else "") in line, c
        posthoc = [json.loads(x) for x in
                   (run.path / "posthoc.jsonl").read_text().splitlines()]
        (ifeval,) = [r for r in posthoc if r["step"] == run.last_step
                     and "eval/ifeval/prompt_strict" in r]
        assert (f"| {ifeval['eval/ifeval/prompt_strict']:.3f} / "
                f"{ifeval['eval/ifeval/instruction_strict']:.3f} |") in line
        (base,) = [r for r in posthoc if r["step"] == 0]
        assert base["posthoc"].endswith("base (adapter disabled)") or "measured in" in \
            base["posthoc"]
    bases = {json.loads(x)["eval/toxicity/id/value"] for r in runs.values()
             for x in (r.path / "posthoc.jsonl").read_text().splitlines()
             if json.loads(x)["step"] == 0}
    assert len(bases) == 1, "one base model, one step-0 value in every run"
    dpo = next(x for x in lines if x.startswith("| dpo | ") and "(" in x and "of" not in x)
    assert dpo.split("|")[2].strip().startswith(f"{bases.pop():.3f} ")


def _build_with_toxicity_pass_set(tmp_path, run: str, passes: float, match: str):
    """Copy the results, set one run's logged toxicity certificate to ``passes``, and check the
    build stops with ``match`` and writes no paper."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / run / "metrics.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "eval/toxicity/id/pass" in record:
            record["eval/toxicity/id/pass"] = passes
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match=match):
        paper_build.build(tmp_path / "paper.md", results)
    assert not (tmp_path / "paper.md").exists()


def test_a_contradicted_drift_claim_stops_the_build(tmp_path):
    """The text says every DPO seed fails the toxicity certificate; make seed 0's pass."""
    _build_with_toxicity_pass_set(tmp_path, "drift_toxicity/0-dpo-dpo-seed0", 1.0,
                                  "dpo seed 0 passes toxicity")


def test_toxicity_only_control_rows_come_from_its_runs(text):
    """Section 5's control table: each toxicity-only run's certificate, accuracy and λ."""
    runs = paper_build.finished_runs(RESULTS / "drift_toxicity_control")
    assert len(runs) == 3
    lines = text[text.index("**The toxicity bound alone.**"):text.index("## 6. Cost")].splitlines()
    for (label, seed), run in runs.items():
        assert set(run.config["constraints"]) == {"toxicity"}
        line = next(x for x in lines if x.startswith(f"| {label}, toxicity only, s{seed} |"))
        value, upper = (run.final(f"eval/toxicity/id/{f}") for f in ("value", "upper"))
        assert f"| {value:.3f} ({upper:.3f})" in line
        assert f"| {run.final('eval/pref_accuracy'):.3f} |" in line
        lam = run.series("lambda_next/toxicity")[1]
        assert line.endswith(f"| {lam.max():.2f} | {lam[-1]:.2f} |")


def test_a_contradicted_control_claim_stops_the_build(tmp_path):
    """The text says the toxicity bound alone passes in 2 of 3 seeds; make seed 0 fail too."""
    _build_with_toxicity_pass_set(tmp_path, "drift_toxicity_control/primal_dual_orpo-seed0", 0.0,
                                  "control passes toxicity in 1 of 3")


def test_a_contradicted_length_start_claim_stops_the_build(tmp_path):
    """The text says the merged start is concise in bf16 and past ε in nf4; make nf4 concise."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "drift_length_start" / "requantized.json"
    record = json.loads(path.read_text())
    record["loadings"]["nf4"]["mean_length"] = record["loadings"]["bf16"]["mean_length"]
    path.write_text(json.dumps(record))
    with pytest.raises(AssertionError, match="the merged start in bf16 / nf4"):
        paper_build.build(tmp_path / "paper.md", results)
    assert not (tmp_path / "paper.md").exists()
