"""Checkpoints evaluated after training (``pdalign-eval --record``): the base as step 0, IFEval
alone on a finished checkpoint, the records in ``posthoc.jsonl`` that the report reads after
``metrics.jsonl``, and the bad flags refused before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pdalign.cli.eval import main as eval_main
from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.evaluation.ifeval import N_PROMPTS, PROMPT_STRICT
from pdalign.reporting.runs import collect_runs
from pdalign.runfiles.metrics import POSTHOC, append_record, eval_key, read_metrics
from pdalign.training import build
from tests.conftest import FIXTURES, FP32, compose, tiny_overrides

SMALL = ["--prompts-per-set", "2", "--max-new-tokens", "4", "--quiet"]
PAIRS = FIXTURES / "pairs.jsonl"
IFEVAL = ["--ifeval", "2", "--ifeval-max-new-tokens", "4"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step ORPO run (an objective that needs no reference, so the base has
    held-out reward margins too) with a toxicity and a KL constraint, as pdalign-train leaves
    it."""
    from pdalign.training.trainer import train

    cfg = compose(tiny_overrides("method=orpo", "train.steps=2", f"data.heldout={PAIRS}",
                                 "constraints=[toxicity,kl_budget]",
                                 "constraints.toxicity.scorer=profanity_check",
                                 "eval.prompts_per_set=2", "eval.max_new_tokens=4",
                                 "train.rollout.max_new_tokens=4", FP32))
    run = tmp_path_factory.mktemp("posthoc") / "run"
    summary = train(cfg, run)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_append_record_keeps_the_old_lines_and_mends_a_missing_newline(tmp_path):
    path = tmp_path / POSTHOC
    append_record(path, {"step": 0, "eval/x": 1.5})
    path.write_text(path.read_text().rstrip("\n"))  # a file someone edited by hand
    append_record(path, {"step": 2, "eval/x": float("inf")})
    assert read_metrics(path) == [{"step": 0, "eval/x": 1.5}, {"step": 2, "eval/x": 1e308}]
    assert not list(tmp_path.glob(f".{POSTHOC}.*"))  # the temp file was renamed


def test_base_and_ifeval_records_join_the_run_in_the_report(run, capsys):
    log_before = (run / "metrics.jsonl").read_bytes()
    tox = eval_key("toxicity", "id", "value")
    kl = eval_key("kl_budget", "id", "value")
    trained = collect_runs(run)[0]
    assert trained.series(tox)[0].tolist() == [2.0]  # the trainer's one evaluation

    assert eval_main(["--run-dir", str(run), "--base", "--record", *SMALL, *IFEVAL]) == 0
    assert eval_main(["--run-dir", str(run), "--ifeval-only", "--record", *IFEVAL,
                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"recorded step 0 in {run / POSTHOC}" in printed
    assert f"recorded step 2 in {run / POSTHOC}" in printed
    assert (run / "eval-base.json").is_file() and (run / "eval-step-2-ifeval.json").is_file()
    assert (run / "metrics.jsonl").read_bytes() == log_before  # the log is never rewritten

    base, ifeval_only = read_metrics(run / POSTHOC)
    assert base["step"] == 0 and base["posthoc"] == "base (adapter disabled)"
    assert tox in base and base[N_PROMPTS] == 2
    assert kl not in base  # the base has no KL against itself: not measured, not written as 0
    assert ifeval_only["step"] == 2 and ifeval_only["posthoc"].endswith(", IFEval only")
    assert not any(k.startswith(("eval/toxicity", "eval/kl_budget")) for k in ifeval_only)

    report_run = collect_runs(run)[0]
    steps, _ = report_run.series(tox)
    assert steps.tolist() == [0.0, 2.0]  # step 0 (base) before the trainer's step 2
    assert report_run.final(tox) == pytest.approx(trained.final(tox))
    assert report_run.final(kl) == pytest.approx(trained.final(kl))
    assert report_run.final(PROMPT_STRICT) == pytest.approx(ifeval_only[PROMPT_STRICT])


def test_the_base_record_is_the_untrained_model_on_the_same_prompts_and_seed(run):
    """--base disables the adapter: the same numbers as the base model loaded on its own."""
    assert eval_main(["--run-dir", str(run), "--base", "--record", *SMALL]) == 0
    (record,) = read_metrics(run / POSTHOC)
    cfg = OmegaConf.load(run / "config.yaml")
    constraints = [c for c in build.build_constraints(cfg) if c.name == "toxicity"]
    base = build.load_base_policy(cfg, torch.device("cpu"))
    _, heldout, _ = build.build_datasets(cfg, base.tokenizer)
    kwargs = {**eval_kwargs(cfg.eval), "prompts_per_set": 2, "max_new_tokens": 4}
    alone = evaluate(base.model, base.tokenizer, constraints, heldout_features=heldout,
                     objective=build.build_objective(cfg), dtype=base.dtype, progress=False,
                     **kwargs)
    trained = collect_runs(run)[0]
    for key in (eval_key("toxicity", "id", "value"), "eval/reward_margin"):
        assert record[key] == pytest.approx(alone[key], abs=1e-6)
    # and not the trained policy: its two steps moved the margin
    assert abs(record["eval/reward_margin"] - trained.final("eval/reward_margin")) > 1e-4


@pytest.mark.parametrize("argv, match", [
    (["--ifeval-only"], "--ifeval-only: no IFEval prompts to score; give --ifeval N"),
    (["--ifeval", "600"], "--ifeval must be an integer from 0 to 541"),
])
def test_bad_posthoc_flags_are_one_line_before_any_model(run, capsys, argv, match):
    assert eval_main(["--run-dir", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err
    assert not (run / POSTHOC).exists()


def test_record_needs_a_step_n_checkpoint(run, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(run / "checkpoints" / "step-2" / "model", adapter)
    assert eval_main(["--checkpoint", str(adapter), "--config", str(run / "config.yaml"),
                      "--record"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--record:" in err and "RUN/checkpoints/step-N" in err


def test_the_sweep_script_measures_the_base_once_and_resumes(finished, tmp_path, capsys):
    """experiments/posthoc_eval.py on two runs of one setup: IFEval on each final checkpoint,
    the base measured in the first and copied (sampled keys only) to the second, and a second
    call that finds everything recorded and adds nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("posthoc_eval",
                                                  Path(__file__).resolve().parent.parent / "experiments" / "posthoc_eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sweep = tmp_path / "sweep"
    for name in ("0-orpo-seed0", "1-orpo-seed1"):
        shutil.copytree(finished, sweep / name)
    argv = [str(sweep), "--ifeval", "2", "--base"]
    assert script.main(argv) == 0
    first, second = (read_metrics(sweep / n / POSTHOC) for n in ("0-orpo-seed0", "1-orpo-seed1"))
    assert [r["step"] for r in first] == [2, 0] and [r["step"] for r in second] == [2, 0]
    measured, copied = first[1], second[1]
    assert measured["posthoc"] == "base (adapter disabled)"
    assert copied["posthoc"] == "copied: base (adapter disabled), measured in 0-orpo-seed0"
    assert "eval/reward_margin" in measured and "eval/reward_margin" not in copied
    assert {k: v for k, v in measured.items() if k not in ("posthoc", "eval/reward_margin",
                                                           "eval/pref_accuracy",
                                                           "eval/n_pairs")} == {
        k: v for k, v in copied.items() if k != "posthoc"}
    assert "base record copied from 0-orpo-seed0" in capsys.readouterr().out
    assert script.main(argv) == 0  # resumed: nothing left to measure
    assert [len(read_metrics(sweep / n / POSTHOC)) for n in ("0-orpo-seed0", "1-orpo-seed1")] \
        == [2, 2]
