"""The constraint contract: estimator maths by hand, built-in costs, configs, and a user plugin.

The user-defined constraints live in this file and are reached only through
``hydra.utils.instantiate`` with a ``_target_`` here, as a user's own module would be.
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pdalign.constraints.kl_budget import KLBudget
from pdalign.constraints.length import Length
from pdalign.constraints.refusal import PhraseRefusalDetector, Refusal
from pdalign.constraints.toxicity import (
    ProfanityCheckScorer,
    Toxicity,
    auto_scorer,
    detoxify_checkpoint_path,
)
from pdalign.contract.base import BatchConstraint, ConstraintEstimate
from pdalign.contract.prompts import bundled_prompt_sets, load_prompts
from pdalign.contract.rollout import RolloutConstraint, importance_weights, score_function_estimate
from pdalign.policy.logprobs import SequenceLogps

CONF = Path(__file__).resolve().parents[1] / "conf"


# ---- a user's own constraints (instantiated by _target_ only) --------------------------------

class ForbiddenWords(RolloutConstraint):
    """Share of responses mentioning any forbidden word (case-insensitive): g <= epsilon."""

    epsilon_range = (0.0, 1.0)

    def __init__(self, name: str, epsilon: float, prompts: str, words: list[str]):
        super().__init__(name, epsilon, prompts)
        self.words = [w.lower() for w in words]

    def cost(self, prompts, responses, response_lengths):
        return torch.tensor([float(any(w in r.lower() for w in self.words)) for r in responses])


class MeanNLL(BatchConstraint):
    """Mean per-token negative log-likelihood of the batch's responses: g <= epsilon nats."""

    def estimate(self, out):
        nll = -out.logps.sum() / out.n_tokens.sum()
        return ConstraintEstimate(value=nll.detach(), surrogate=nll)


# ---- the score-function estimator -------------------------------------------------------------

def test_surrogate_gradient_is_zero_when_every_cost_equals_the_baseline():
    logps = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    est = score_function_estimate(torch.full((3,), 0.4), logps, torch.ones(3), baseline=0.4)
    est.surrogate.backward()
    assert torch.equal(logps.grad, torch.zeros(3))
    assert float(est.value) == pytest.approx(0.4)


def test_estimator_worked_by_hand_with_unit_weights():
    """c = (1, 0, 0, 1), b = 0.25, w = 1, N = 4.

    g_hat = mean(c) = 0.5, and the surrogate has that value.
    d surrogate / d log pi_i = (c_i - b) / N = (0.75, -0.25, -0.25, 0.75) / 4
                             = (0.1875, -0.0625, -0.0625, 0.1875).
    """
    logps = torch.tensor([-2.0, -1.0, -3.0, -4.0], requires_grad=True)
    est = score_function_estimate(torch.tensor([1.0, 0.0, 0.0, 1.0]), logps, torch.ones(4),
                                  baseline=0.25)
    assert float(est.value) == 0.5 and float(est.surrogate.detach()) == 0.5
    assert not est.value.requires_grad and est.surrogate.requires_grad
    est.surrogate.backward()
    assert logps.grad.tolist() == [0.1875, -0.0625, -0.0625, 0.1875]


def test_importance_weights_are_clipped_at_the_bound():
    """log-ratios (0, ln 3, -ln 3, ln 1.5) with clip 2 -> weights (1, 2, 0.5, 1.5).

    Self-normalized g_hat with c = (1, 0, 1, 0): (1*1 + 0.5*1) / (1 + 2 + 0.5 + 1.5) = 0.3.
    """
    old = torch.tensor([-5.0, -5.0, -5.0, -5.0])
    new = old + torch.tensor([0.0, math.log(3), -math.log(3), math.log(1.5)])
    w = importance_weights(new, old, clip=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 2.0, 0.5, 1.5]))
    est = score_function_estimate(torch.tensor([1.0, 0.0, 1.0, 0.0]), new.requires_grad_(), w,
                                  baseline=0.0)
    assert float(est.value) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="clip must be > 1"):
        importance_weights(new, old, clip=1.0)


def test_baseline_update_math():
    """m = 0.9: first batch mean 0.5 sets b = 0.5; next mean 1.0 gives 0.9*0.5 + 0.1*1 = 0.55."""
    con = Length(epsilon=10, prompts="benign", baseline_momentum=0.9)
    assert con.baseline is None
    con.update_baseline(torch.tensor([0.0, 1.0]))
    assert con.baseline == 0.5
    con.update_baseline(torch.tensor([1.0, 1.0]))
    assert con.baseline == pytest.approx(0.55)
    # before any update the estimate uses the batch mean as its baseline
    fresh = Length(epsilon=10, prompts="benign")
    logps = torch.zeros(2, requires_grad=True)
    fresh.estimate(torch.tensor([2.0, 2.0]), logps, torch.ones(2)).surrogate.backward()
    assert torch.equal(logps.grad, torch.zeros(2))


# ---- built-in costs ---------------------------------------------------------------------------

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "Sorry, I cannot assist with this request.",
    "I cannot provide instructions for making weapons.",
    "As an AI language model, I must decline.",
    "I won\u2019t do that.",  # curly apostrophe
    "I must respectfully decline.",
    "That request goes against my guidelines.",
    "No, I will not write that.",
    "While I understand your curiosity, I am not able to help with that request.",
    "  I'm unable to comply.",
]
COMPLIANCES = [
    "Sure! Here is a recipe for vegetarian chili.",
    "To kill a Python process, find its PID and run kill -9 PID.",
    "I'm sorry to hear about your dog. Here are some ways to cope.",
    "I can help with that! First, open a terminal.",
    "Here are the steps. " + "Preheat the oven and wait. " * 10 + "I cannot guarantee results.",
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_detector_flags_refusals(text):
    assert PhraseRefusalDetector()(text)


@pytest.mark.parametrize("text", COMPLIANCES)
def test_refusal_detector_passes_answers(text):
    assert not PhraseRefusalDetector()(text)


def test_refusal_and_over_refusal_costs():
    responses = ["I'm sorry, but I can't help with that.", "Sure, here you go."]
    lengths = torch.tensor([9, 5])
    refusal = Refusal(epsilon=0.2, prompts="adversarial", target="refuse")
    over = Refusal(name="over_refusal", epsilon=0.1, prompts="benign", target="comply")
    assert refusal.cost(["x", "y"], responses, lengths).tolist() == [0.0, 1.0]
    assert over.cost(["x", "y"], responses, lengths).tolist() == [1.0, 0.0]
    custom = Refusal(epsilon=0.2, prompts="adversarial", detector=lambda r: "nope" in r)
    assert custom.cost(["x", "y"], ["nope", "ok"], lengths).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="constraints.refusal.target"):
        Refusal(epsilon=0.2, prompts="adversarial", target="maybe")


def test_length_cost_and_relative_calibration():
    """Absolute: cost = token counts. Relative: reference lengths (10, 20, 30) -> mean 20,
    epsilon = 1.2 * 20 = 24."""
    absolute = Length(epsilon=32, prompts="benign")
    assert absolute.cost(["a", "b"], ["x", "y"], torch.tensor([3, 7])).tolist() == [3.0, 7.0]
    assert not absolute.needs_calibration
    relative = Length(epsilon=None, prompts="benign", relative_to_reference=True, ratio=1.2)
    assert relative.needs_calibration
    relative.calibrate(torch.tensor([10.0, 20.0, 30.0]))
    assert relative.epsilon == pytest.approx(24.0) and not relative.needs_calibration
    restored = Length(epsilon=None, prompts="benign", relative_to_reference=True)
    restored.load_state_dict(relative.state_dict())
    assert restored.epsilon == pytest.approx(24.0) and not restored.needs_calibration
    with pytest.raises(ValueError, match="constraints.length.epsilon is required"):
        Length(prompts="benign")


def test_kl_budget_is_a_token_weighted_mean():
    """kl sums (1, 3) over (1, 7) tokens: 4 / 8 = 0.5 nats/token (not the mean of ratios,
    (1 + 3/7) / 2 = 0.71). d g / d kl_i = 1 / 8."""
    kl = torch.tensor([1.0, 3.0], requires_grad=True)
    out = SequenceLogps(logps=torch.zeros(2), n_tokens=torch.tensor([1.0, 7.0]), kl=kl)
    budget = KLBudget(epsilon=0.1)
    assert budget.needs_kl and budget.reads_pairs and budget.sampled_prompts() is None
    est = budget.estimate(out)
    assert float(est.value) == 0.5 and float(est.surrogate.detach()) == 0.5
    est.surrogate.backward()
    assert kl.grad.tolist() == [0.125, 0.125]
    with pytest.raises(RuntimeError, match="with_kl=True"):
        budget.estimate(SequenceLogps(logps=torch.zeros(2), n_tokens=torch.ones(2), kl=None))


def test_profanity_check_scores_an_insult_above_a_polite_sentence():
    scorer = ProfanityCheckScorer()
    insult, polite = scorer(["You are a stupid fucking idiot, shut up.",
                             "Thank you so much, have a lovely day."])
    assert insult > 0.5 > polite
    tox = Toxicity(epsilon=0.1, scorer="profanity_check")
    costs = tox.cost(["p", "q"], ["Shut up, you damn moron.", "Happy to help!"],
                     torch.tensor([6, 4]))
    assert costs.dtype == torch.float32 and costs[0] > costs[1]


def test_detoxify_offline_without_a_checkpoint_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def offline(*args, **kwargs):  # what urllib raises without a network
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as err:
        Toxicity(epsilon=0.1, scorer="detoxify")
    message = str(err.value)
    assert "constraints.toxicity.scorer=profanity_check" in message
    assert str(tmp_path) in message and "URLError" in message


def test_detoxify_with_the_hub_set_offline_fails_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(RuntimeError, match=r"not cached.*constraints\.tox\.scorer=profanity_check"):
        Toxicity(name="tox", epsilon=0.1, scorer="detoxify")


def test_auto_scorer_is_the_offline_one_without_a_cached_detoxify_and_says_so(tmp_path,
                                                                                monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def no_download(*args, **kwargs):
        raise AssertionError("auto attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with caplog.at_level("INFO", logger="pdalign"):
        tox = Toxicity(epsilon=0.1)  # the default scorer is auto
    assert isinstance(tox.scorer, ProfanityCheckScorer) and tox.scorer_name == "profanity_check"
    assert "constraints.toxicity.scorer=auto: profanity_check judges (no Detoxify checkpoint at " \
        f"{tmp_path}" in caplog.text
    costs = tox.cost(["p", "q"], ["Shut up, you damn moron.", "Happy to help!"],
                     torch.tensor([6, 4]))
    assert costs[0] > 0.5 > costs[1]


def test_auto_scorer_picks_detoxify_once_its_checkpoint_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert auto_scorer()[0] == "profanity_check"
    cached = detoxify_checkpoint_path("original")
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # only its presence decides; loading it is DetoxifyScorer's job
    assert auto_scorer() == ("detoxify", f"Detoxify's checkpoint is cached at {cached}")


# ---- config errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: Refusal(epsilon=1.5, prompts="adversarial"),
     r"constraints\.refusal\.epsilon.*\[0, 1\]"),
    (lambda: Refusal(name="over", epsilon=-0.1, prompts="benign"), r"constraints\.over\.epsilon"),
    (lambda: KLBudget(epsilon=0.0), r"constraints\.kl_budget\.epsilon.*\(0, inf\).*nats"),
    (lambda: Length(epsilon=-3, prompts="benign"), r"constraints\.length\.epsilon.*tokens"),
    (lambda: Toxicity(epsilon=2, scorer="profanity_check"), r"constraints\.toxicity\.epsilon"),
    (lambda: KLBudget(epsilon=0.1, lambda_max=-1), r"constraints\.kl_budget\.lambda_max"),
])
def test_bad_epsilon_names_the_field_and_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_missing_prompt_file_names_the_field_and_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        Refusal(epsilon=0.2, prompts=str(missing))
    assert "constraints.refusal.prompts" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="constraints.toxicity.prompts"):
        Toxicity(epsilon=0.1, prompts="no_such_set", scorer="profanity_check")


def test_user_prompt_files_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "one", "id": 1}\n\n{"prompt": "two"}\n')
    assert load_prompts(jsonl) == ["one", "two"]
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text('id,prompt\n1,"hello, world"\n2,bye\n')
    assert load_prompts(str(csv_file)) == ["hello, world", "bye"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="line 1 has no 'prompt' field"):
        load_prompts(bad, "constraints.r.prompts")


def test_bundled_prompt_sets_sizes_cards_and_disjoint_splits():
    sizes = {name: len(load_prompts(name)) for name in bundled_prompt_sets()}
    assert sizes == {"adversarial": 122, "adversarial_contrast": 210, "adversarial_framed": 244,
                     "adversarial_heldout": 210, "adversarial_lookalike": 240,
                     "adversarial_mixed": 484, "adversarial_shifted": 210, "benign": 120,
                     "benign_extra": 480, "benign_framed": 240, "benign_heldout": 210,
                     "benign_lookalike": 240, "benign_mixed": 480, "benign_shifted": 210,
                     "benign_wide": 1200,
                     "crude_voice": 200, "crude_voice_heldout": 200, "length_bias": 200,
                     "length_bias_heldout": 200,
                     "provocative": 80, "provocative_heldout": 40, "unseen_benign": 210,
                     "unseen_harmful": 210}
    from pdalign.contract.prompts import bundled_prompts_dir

    for name in sizes:
        assert (bundled_prompts_dir() / f"{name}.md").is_file()
    # a framed set is its plain set, then each plain row once more inside a framing
    rows = {name: load_prompts(name) for name in sizes}
    # the wide set is the benign mixed set, then benign_extra, then its 240 plain rows framed
    wide, extra = rows.pop("benign_wide"), rows["benign_extra"]
    assert wide[:960] == rows["benign_mixed"] + extra
    for request, wrapped in zip(extra[:240], wide[960:], strict=True):
        assert request[1:] in wrapped and wrapped != request
    rows["benign_wide (framed rows)"] = wide[960:]
    for plain in ("adversarial", "benign"):
        # a mixed set is the framed set, then the look-alike set
        mixed = rows.pop(f"{plain}_mixed")
        assert mixed == rows[f"{plain}_framed"] + rows[f"{plain}_lookalike"]
        framed = rows.pop(f"{plain}_framed")
        assert framed[:len(rows[plain])] == rows[plain]
        for request, wrapped in zip(rows[plain], framed[len(rows[plain]):]):
            assert request[1:] in wrapped and wrapped != request
        rows[f"{plain}_framed (framed rows)"] = framed[len(rows[plain]):]
    seen: dict[str, str] = {}
    for name in rows:
        for prompt in rows[name]:
            key = " ".join(prompt.lower().split())
            assert key not in seen, f"{prompt!r} is in both {seen.get(key)} and {name}"
            seen[key] = name


# ---- configs ----------------------------------------------------------------------------------

def test_every_constraint_yaml_composes_and_instantiates(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    names = sorted(p.stem for p in (CONF / "constraints").glob("*.yaml"))
    assert names == ["kl_budget", "length", "over_refusal", "over_refusal_openers",
                     "over_refusal_pairs", "refusal", "refusal_openers", "refusal_pairs", "toxicity"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no Detoxify checkpoint: auto is offline
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=None, overrides=[
            f"+constraints=[{','.join(names)}]"])
    assert sorted(cfg.constraints) == names  # multi-select: one entry per file
    built = {node.name: instantiate(node) for node in cfg.constraints.values()}
    assert sorted(built) == names
    assert built["over_refusal"].target == "comply" and built["refusal"].target == "refuse"
    assert built["over_refusal_pairs"].target == "comply"
    assert built["over_refusal_openers"].side == "bounded"
    assert built["refusal_openers"].side == "wanted" and len(built["refusal_openers"].prompts) == 122
    assert built["refusal_pairs"].target == "refuse" and len(built["refusal_pairs"].pair_rows) == 122
    assert isinstance(built["refusal"].detector, PhraseRefusalDetector)
    assert built["toxicity"].scorer_name == "profanity_check"  # auto, with no Detoxify cached
    for name in names:  # each file alone, as written
        node = OmegaConf.load(CONF / "constraints" / f"{name}.yaml")[name]
        assert instantiate(node).name == name


# ---- a user-defined constraint, end to end ----------------------------------------------------

def test_user_rollout_constraint_end_to_end_through_instantiate(tmp_path):
    """Config -> instantiate -> generate -> cost -> estimate -> backward on LoRA weights,
    with the real pdalign.policy.logprobs.sequence_logps."""
    from pdalign.contract.manager import RolloutManager
    from pdalign.policy.models import apply_peft, load_model

    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me fact number {i}."}) + "\n"
                               for i in range(12)))
    con = instantiate({"_target_": f"{__name__}.ForbiddenWords", "name": "forbidden",
                       "epsilon": 0.1, "prompts": str(prompts), "words": ["e"]})
    assert type(con).__name__ == "ForbiddenWords" and con.sampled_prompts() == prompts.resolve()
    assert not con.reads_pairs and not con.needs_kl
    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    # one new token each: about half of the vocabulary's pieces hold an "e" (four tokens nearly
    # always do), so the 8 costs are mixed
    manager = RolloutManager({"forbidden": con}, tok, every=2, prompts_per_rollout=8,
                             max_new_tokens=1, seed=0)
    estimate = manager.step_estimates(model, 0)["forbidden"]
    costs = manager.rollouts["forbidden"].costs["forbidden"]
    assert 0 < float(costs.mean()) < 1, "need mixed costs for a non-zero gradient"
    assert float(estimate.value) == pytest.approx(float(costs.mean()))
    (estimate.surrogate - con.epsilon).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_user_batch_constraint_through_instantiate():
    """logps (-4, -2) over (2, 2) tokens: NLL = 6 / 4 = 1.5 nats/token; d g / d logp_i = -1/4."""
    con = instantiate({"_target_": f"{__name__}.MeanNLL", "name": "nll", "epsilon": 2.0})
    logps = torch.tensor([-4.0, -2.0], requires_grad=True)
    est = con.estimate(SequenceLogps(logps=logps, n_tokens=torch.tensor([2.0, 2.0])))
    assert float(est.value) == 1.5 and con.reads_pairs and not con.needs_kl
    est.surrogate.backward()
    assert logps.grad.tolist() == [-0.25, -0.25]


def test_length_relative_mode_calibrates_from_a_reference_rollout():
    from pdalign.contract.manager import RolloutManager
    from pdalign.policy.models import load_model

    model, tok = load_model("tiny")
    con = Length(epsilon=None, prompts="benign_heldout", relative_to_reference=True, ratio=1.5)
    manager = RolloutManager([con], tok, max_new_tokens=3, batch_size=32, seed=0)
    with pytest.raises(RuntimeError, match="calibrate"):
        manager.step_estimates(model, 0)
    done = manager.calibrate(model)  # the whole 60-prompt set, at most 3 tokens each
    assert done == {"length": con.epsilon} and 1.5 <= con.epsilon <= 4.5
    assert manager.calibrate(model) == {}  # already calibrated: a no-op

