"""Iterative on-policy constrained DPO (pdalign/iterative/): the Lagrangian pair construction by
hand, the dual step from a round's sampled rates, the per-round files, resume at a round boundary,
the previous round's policy as the next round's model and reference, and bad input before any
model loads. The runs are on the tiny model, fp32 (the reference test compares logits)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from pdalign.iterative import loop as it
from pdalign.iterative import pairs as iter_pairs
from pdalign.iterative.judges import PairAnswers
from pdalign.runfiles import rounds
from tests.conftest import CONF_DIR, FP32, tiny_overrides

DUAL_LR = 0.5  # conf/dual/gradient.yaml
EPS = 0.2  # conf/constraints/refusal.yaml


def compose_iterate(*extra: str):
    """pdalign-iterate's config (conf/iterate.yaml) for a tiny-model run of a few seconds."""
    overrides = [o for o in tiny_overrides() if not o.startswith("data.train")] + [
        FP32, "train.batch_size=2", "constraints=[refusal]", "iterative.samples_per_prompt=2",
        "iterative.prompts_per_round=4", "iterative.steps_per_round=2",
        "iterative.max_new_tokens=4",
        "iterative.candidates=[{_target_: pdalign.iterative.PairAnswers}]", *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="iterate", overrides=overrides)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory) -> Path:
    """An uninterrupted 3-round run."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("iter") / "run"
    it.run(compose_iterate("iterative.rounds=3"), run_dir)
    return run_dir


# ---- the construction, by hand ---------------------------------------------------------------

def test_lagrangian_reward_sums_every_priced_cost():
    """r = [1, 2]; costs c1 = [1, 0], c2 = [0.5, 2]; lambda = [2, 1]:
    r_lambda = [1 - 2*1 - 1*0.5, 2 - 2*0 - 1*2] = [-1.5, 0]."""
    got = iter_pairs.lagrangian_reward(torch.tensor([1.0, 2.0]),
                               torch.tensor([[1.0, 0.0], [0.5, 2.0]]), torch.tensor([2.0, 1.0]))
    assert got.tolist() == pytest.approx([-1.5, 0.0], abs=1e-12)


def test_best_vs_worst_by_hand_with_flipped_and_reversed_pairs():
    """One refusal constraint (cost 1 = answered), lambda = 2.5.

    prompt 0: a r=-1.0 c=1 -> r_l=-3.5; b r=-2.0 c=1 -> -4.5; z (refusal) r=-1.5 c=0 -> -1.5.
      best z, worst b. Under r alone a (-1.0) wins: flipped. r(z) = -1.5 > r(b) = -2.0: the
      judge agrees with the pair's order, not reversed.
    prompt 1: d r=-1.0 c=1 -> -3.5; e r=-1.2 c=1 -> -3.7; y (refusal) r=-3.0 c=0 -> -3.0.
      best y, worst e; flipped (d wins under r), and r(y) = -3.0 < r(e) = -1.2: reversed.
    prompt 2: f r=-0.5 c=1 -> -3.0; g r=-0.9 c=1 -> -3.4: both cost 1, lambda shifts both
      alike: f over g as under r, neither flipped nor reversed.
    prompt 3: two identical answers, equal r_l: no pair.
    """
    texts = ["a", "b", "z", "d", "e", "y", "f", "g", "same", "same"]
    reward = torch.tensor([-1.0, -2.0, -1.5, -1.0, -1.2, -3.0, -0.5, -0.9, -0.5, -0.5])
    costs = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    r_lam = iter_pairs.lagrangian_reward(reward, costs, torch.tensor([2.5]))
    assert r_lam.tolist() == pytest.approx([-3.5, -4.5, -1.5, -3.5, -3.7, -3.0, -3.0, -3.4,
                                            -3.0, -3.0])
    groups = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    pairs = iter_pairs.best_vs_worst(groups, reward, r_lam, texts)
    assert [(p.prompt, texts[p.chosen], texts[p.rejected], p.flipped, p.reversed)
            for p in pairs] == [(0, "z", "b", True, False), (1, "y", "e", True, True),
                                (2, "f", "g", False, False)]
    # at lambda = 0 the same candidates pair by r alone, and nothing is flipped
    plain = iter_pairs.best_vs_worst(groups, reward, reward, texts)
    assert [(texts[p.chosen], texts[p.rejected], p.flipped, p.reversed) for p in plain] == [
        ("a", "b", False, False), ("d", "y", False, False), ("f", "g", False, False)]


def test_dual_state_round_trips_through_json():
    from pdalign.training.dual import DualState

    dual = DualState(["a", "b"], rule="pid", kp=1.0, ki=0.5, kd=0.5)
    dual.update(torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.2]))
    other = DualState(["a", "b"], rule="pid", kp=1.0, ki=0.5, kd=0.5)
    other.load_state_dict(it.dual_from_json(json.loads(json.dumps(it.dual_to_json(
        dual.state_dict())))))
    g, eps = torch.tensor([0.7, 0.3]), torch.tensor([0.2, 0.2])
    assert torch.allclose(dual.update(g, eps), other.update(g, eps), rtol=0, atol=1e-15)


# ---- a run's rounds ----------------------------------------------------------------------------

def test_lambda_follows_the_dual_rule_from_each_rounds_sampled_rate(three_rounds):
    """g_k = the mean refusal cost of round k's *policy* samples (the refusal candidates cost 0
    and are not samples of the policy); lambda_k = clip(lambda_{k-1} + 0.5 (g_k - 0.2), 0, 10),
    lambda_{-1} = 0, taken before round k's pairs are built."""
    lam = 0.0
    for k, record in enumerate(rounds.read_rounds(three_rounds)):
        samples = read_jsonl(rounds.round_dir(three_rounds, k) / "samples.jsonl")
        own = [s["costs"]["refusal"] for s in samples if s["source"] == it.POLICY_SOURCE]
        assert len(own) == 4 * 2 and len(samples) == 4 * 3  # K=2 samples + 1 refusal each
        g = sum(own) / len(own)
        assert record["rate"]["refusal"] == pytest.approx(g, abs=1e-12)
        assert record["lambda_before"]["refusal"] == pytest.approx(lam, abs=1e-12)
        lam = min(max(lam + DUAL_LR * (g - EPS), 0.0), 10.0)
        assert record["lambda"]["refusal"] == pytest.approx(lam, abs=1e-12)
    assert lam > 0  # the tiny model never refuses: lambda rose every round


def test_every_round_writes_its_files(three_rounds):
    records = rounds.read_rounds(three_rounds)
    assert [r["round"] for r in records] == [0, 1, 2]
    for k, record in enumerate(records):
        rdir = rounds.round_dir(three_rounds, k)
        for name in ("samples.jsonl", "pairs.jsonl", "round.json", "train/metrics.jsonl",
                     "train/config.yaml", "policy/config.json", "policy/model.safetensors"):
            assert (rdir / name).is_file(), (k, name)
        lam = record["lambda"]["refusal"]
        for s in read_jsonl(rdir / "samples.jsonl"):  # r_lambda = r - lambda c, per candidate
            assert s["r_lambda"] == pytest.approx(s["r"] - lam * s["costs"]["refusal"],
                                                  abs=1e-9)
        pairs = read_jsonl(rdir / "pairs.jsonl")
        assert record["n_pairs"] == len(pairs) >= 2
        assert record["n_flipped"] == sum(p["flipped"] for p in pairs)
        assert record["n_reversed"] == sum(p["reversed"] for p in pairs)
        for p in pairs:
            best_r = max(s["r"] for s in read_jsonl(rdir / "samples.jsonl")
                         if s["prompt"] == p["prompt"])
            assert p["r_lambda_chosen"] > p["r_lambda_rejected"]
            assert p["flipped"] == (p["r_chosen"] < best_r)
            assert p["reversed"] == (p["r_chosen"] < p["r_rejected"])
        # the round's held-out evaluation is the trainer's, on the round's trained policy
        assert 0.0 <= record["eval"]["eval/refusal/id/value"] <= 1.0
        assert record["train"]["steps"] == 2
    assert (three_rounds / rounds.INITIAL_FILE).is_file()
    lines = read_jsonl(three_rounds / rounds.ROUNDS_JSONL)
    assert [r["round"] for r in lines] == [0, 1, 2] and "dual_state" not in lines[0]
    table = (three_rounds / rounds.ROUNDS_MD).read_text()
    assert "λ refusal" in table and "held-out refusal/id" in table
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 1 + 1 + 3


def test_a_flip_is_counted_once_lambda_outweighs_the_judge(three_rounds):
    """Over three rounds (lambda 0.4, 0.8, 1.2) some refusal candidate that the judge ranks
    below a sample wins its prompt: a flipped pair, which pairs.jsonl marks; only a candidate
    with a lower cost (a refusal) can take the win from a better-judged sample."""
    flipped = [p for k in range(3)
               for p in read_jsonl(rounds.round_dir(three_rounds, k) / "pairs.jsonl")
               if p["flipped"]]
    assert flipped, "no pair was relabelled by lambda in three rounds"
    assert all(p["chosen_source"] != it.POLICY_SOURCE for p in flipped)


def test_the_reference_of_round_k_plus_1_is_round_ks_policy(three_rounds):
    """Round 1 trains from round 0's merged policy: its config names it, its reference (the
    adapter disabled) has round 0's policy's logits and not the base model's, and at its first
    step the DPO rewards are 0 (policy = reference)."""
    from transformers import AutoModelForCausalLM

    from pdalign.policy.models import load_model
    from pdalign.training import build

    cfg1 = OmegaConf.load(rounds.round_dir(three_rounds, 1) / "train" / "config.yaml")
    policy0 = rounds.round_dir(three_rounds, 0) / "policy"
    assert Path(cfg1.model.name_or_path) == policy0
    round1 = build.build_policy(cfg1, build.build_tokenizer(cfg1), dtype=torch.float32,
                                quant=None, device=torch.device("cpu"), needs_reference=True)
    ids = torch.tensor([[1, 504, 3000, 42, 7, 99]])
    with torch.no_grad(), round1.reference() as ref:
        got = ref(input_ids=ids).logits
    want = AutoModelForCausalLM.from_pretrained(policy0)(input_ids=ids).logits.detach()
    base, _ = load_model("tiny", tiny=dict(compose_iterate().model.tiny))
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, base(input_ids=ids).logits.detach(), rtol=0, atol=1e-3)
    for k in range(3):
        first = read_jsonl(rounds.round_dir(three_rounds, k) / "train" / "metrics.jsonl")[0]
        # beta (0.1) x fp32 rounding of summed log-probs of ~-100 (ulp ~1e-5) ~ 1e-6
        assert first["step"] == 1 and abs(first["rewards/margins"]) < 1e-5, k


def test_resume_at_a_round_boundary_gives_the_uninterrupted_run(three_rounds, tmp_path):
    """Two rounds, then a crash in round 2 (a half-written round dir), then the same command
    with rounds=3: round 2's samples, pairs and lambda equal the uninterrupted run's."""
    run_dir = tmp_path / "run"
    it.run(compose_iterate("iterative.rounds=2"), run_dir)
    partial = rounds.round_dir(run_dir, 2)
    partial.mkdir()
    (partial / "pairs.jsonl").write_text('{"prompt": "torn')
    it.run(compose_iterate("iterative.rounds=3"), run_dir)
    for name in ("samples.jsonl", "pairs.jsonl"):
        assert (rounds.round_dir(run_dir, 2) / name).read_text() == \
            (rounds.round_dir(three_rounds, 2) / name).read_text(), name
    got, want = rounds.read_rounds(run_dir), rounds.read_rounds(three_rounds)
    assert len(got) == 3
    for a, b in zip(got, want):
        assert math.isclose(a["lambda"]["refusal"], b["lambda"]["refusal"], abs_tol=1e-12)
        assert (a["n_flipped"], a["n_reversed"]) == (b["n_flipped"], b["n_reversed"])
    # the finished run again: nothing to do, and a changed config is refused by key
    it.run(compose_iterate("iterative.rounds=3"), run_dir)
    with pytest.raises(ValueError, match="iterative.samples_per_prompt"):
        it.run(compose_iterate("iterative.rounds=3", "iterative.samples_per_prompt=3"), run_dir)


# ---- bad input: one error naming the field, before any model --------------------------------

@pytest.mark.parametrize("override,field", [
    ("iterative.samples_per_prompt=0", "iterative.samples_per_prompt"),
    ("iterative.samples_per_prompt=1;iterative.candidates=[]", "iterative.samples_per_prompt"),
    ("iterative.rounds=0", "iterative.rounds"),
    ("iterative.temperature=0", "iterative.temperature"),
    ("+iterative.roundz=2", "iterative.roundz"),
    ("constraints=[refusal,kl_budget]", "constraints.kl_budget"),
    ("method=primal_dual", "method=primal_dual"),
    ("~iterative.judge._target_", "iterative.judge"),
    ("iterative.prompts=/no/such.jsonl", "iterative.prompts"),
    ("iterative.candidates=[{_target_: pdalign.iterative.PairAnswers, pairs: nope}]",
     "iterative.candidates.pairs"),
    ("train.lr=0", "train.lr"),
])
def test_bad_input_names_the_field_before_any_model(override, field, tmp_path, monkeypatch):
    import pdalign.policy.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(pdalign.policy.models, "load_model", no_model)
    with pytest.raises((ValueError, FileNotFoundError), match=field.replace("[", r"\[")):
        it.run(compose_iterate(*override.split(";")), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_bad_input_is_one_line_and_an_error(tmp_path):
    exe = Path(sys.executable).with_name("pdalign-iterate")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pdalign.cli.iterate"]
    out = subprocess.run(cmd + ["model=tiny", "constraints=[kl_budget]",
                                f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "constraints.kl_budget" in out.stderr


def test_shipped_iterative_configs_compose_and_pass_their_checks():
    from tests.conftest import compose

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="iterate", overrides=["experiment=iterative"])
    constraints, pool, judge, candidates, dual = it.setup(cfg)  # loads no model
    assert [c.name for c in constraints] == ["refusal"] and cfg.iterative.rounds >= 3
    assert isinstance(candidates[0], PairAnswers) and dual.names == ["refusal"]
    # every adversarial prompt has a bundled refusal to offer
    assert all(len(c) == 1 for c in candidates[0](pool.prompts[0]))
    assert compose(["experiment=iterative"]).iterative.rounds == cfg.iterative.rounds


def test_report_prints_the_round_table_of_an_iterative_run(three_rounds, tmp_path, capsys):
    from pdalign.cli.report import main

    assert main([str(three_rounds), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "λ refusal" in printed and (tmp_path / rounds.ROUNDS_MD).is_file()
    rows = (tmp_path / "rounds.csv").read_text().splitlines()
    assert rows[0].startswith("round,") and len(rows) == 1 + 3


def test_without_constraints_the_judge_alone_makes_the_pairs(tmp_path):
    """constraints=[] on a prompt pool of its own: r_lambda = r, nothing flips, lambda is empty,
    and every pair is the prompt's best sample against its worst by r."""
    run_dir = tmp_path / "run"
    it.run(compose_iterate("constraints=[]", "iterative.prompts=benign",
                           "iterative.candidates=[]", "iterative.rounds=1"), run_dir)
    (record,) = rounds.read_rounds(run_dir)
    assert record["lambda"] == {} and record["n_pairs"] >= 2
    assert record["n_flipped"] == record["n_reversed"] == 0
    samples = read_jsonl(rounds.round_dir(run_dir, 0) / "samples.jsonl")
    assert all(s["r_lambda"] == s["r"] and s["costs"] == {} for s in samples)
    for p in read_jsonl(rounds.round_dir(run_dir, 0) / "pairs.jsonl"):
        assert p["r_chosen"] > p["r_rejected"]
        assert p["r_chosen"] == max(s["r"] for s in samples if s["prompt"] == p["prompt"])
