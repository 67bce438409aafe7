"""Rollout signal: the RolloutManager's no-spread warning and per-step diagnostics, the share
of samples at the generation budget, and Length's budget check.

A rollout whose samples all cost the same gives the score-function surrogate
mean(w (c - b) log pi) zero gradient; on the tiny model with a few tokens per sample.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import pdalign.policy.sampling as sampling
from pdalign.constraints.length import Length
from pdalign.contract.manager import NO_SIGNAL_AFTER, RolloutManager, no_spread
from pdalign.contract.rollout import RolloutConstraint
from pdalign.reporting.runs import collect_runs
from pdalign.reporting.stats import signal_health
from pdalign.runfiles.metrics import signal_key
from tests.conftest import scripted_decode

WARNING = ("constraint scripted has no signal: every sample of the last 3 rollouts costs 1.0, "
           "so its score-function surrogate has zero gradient; use a pair or opener constraint, a "
           "dense estimator where the constraint has one (length: "
           "constraints.<name>.estimator=stop), or widen the generation budget "
           "(train.rollout.max_new_tokens=3;")


class Scripted(RolloutConstraint):
    """Cost of the i-th rollout: all ones where ``script[i]`` is True (no spread), else the
    sample index 0, 1, ..., N-1 (spread N - 1)."""

    def __init__(self, name, prompts, script):
        super().__init__(name, 0.5, prompts)
        self.script, self.calls = list(script), 0

    def cost(self, prompts, responses, response_lengths):
        flat = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return torch.ones(len(prompts)) if flat else torch.arange(len(prompts)).float()


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "pdalign" and r.levelno == logging.WARNING]


def _manager(tok, constraints, **kwargs):
    return RolloutManager(constraints, tok, every=1, prompts_per_rollout=3, max_new_tokens=3,
                          seed=0, **kwargs)


def test_constant_cost_warns_once_after_no_signal_after_rollouts(tiny, prompt_file, caplog):
    """Five fresh rollouts (steps 0..4) of a constant and of a varying cost on one shared
    prompt set: flat_rollouts of the constant one counts 1, 2, 3, 4, 5 and the warning is
    logged once, when it reaches 3; the varying one stays at 0 and never warns."""
    model, tok = tiny
    flat = Scripted("scripted", str(prompt_file), [True])
    varied = Scripted("varied", str(prompt_file), [False])
    manager = _manager(tok, [flat, varied])
    assert manager.no_signal_after == NO_SIGNAL_AFTER == 3
    assert manager.signal_stats() == {}  # nothing sampled yet
    caplog.set_level(logging.WARNING, logger="pdalign")
    counts = []
    for step in range(5):
        assert manager.maybe_sample(model, step)
        counts.append(manager.flat_rollouts["scripted"])
        assert len(_warnings(caplog)) == (0 if step < 2 else 1)
    assert counts == [1, 2, 3, 4, 5] and manager.flat_rollouts["varied"] == 0
    (message,) = _warnings(caplog)
    assert message.startswith(WARNING)
    # signal_stats by hand: 3 samples; constant cost 1 -> spread 0; index cost 0,1,2 -> 2
    rollout = manager.rollouts["scripted+varied"]
    at_budget = sum(int(n) >= 3 for n in rollout.response_lengths) / 3
    assert manager.signal_stats() == pytest.approx({
        "signal/scripted/spread": 0.0, "signal/scripted/at_budget": at_budget,
        "signal/scripted/flat_rollouts": 5.0, "signal/scripted/silent_when_flat": 1.0,
        "signal/varied/spread": 2.0, "signal/varied/at_budget": at_budget,
        "signal/varied/flat_rollouts": 0.0, "signal/varied/silent_when_flat": 1.0})


def test_spread_resets_the_count_and_a_new_streak_warns_again(tiny, prompt_file, caplog):
    """Script flat, flat, varied, flat, flat, flat: counts 1, 2, 0, 1, 2, 3; the only warning
    comes at the sixth rollout. Reused samples (every=2, odd steps) count nothing."""
    model, tok = tiny
    con = Scripted("scripted", str(prompt_file), [True, True, False, True, True, True])
    manager = RolloutManager([con], tok, every=2, prompts_per_rollout=3, max_new_tokens=3,
                             seed=0)
    caplog.set_level(logging.WARNING, logger="pdalign")
    counts = []
    for step in range(12):
        manager.maybe_sample(model, step)
        counts.append(manager.flat_rollouts["scripted"])
    assert counts == [1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 3, 3]
    assert len(_warnings(caplog)) == 1 and _warnings(caplog)[0].startswith(WARNING)


def test_no_signal_after_zero_never_warns_and_negative_is_an_error(tiny, prompt_file, caplog):
    model, tok = tiny
    manager = _manager(tok, [Scripted("scripted", str(prompt_file), [True])],
                       no_signal_after=0)
    caplog.set_level(logging.WARNING, logger="pdalign")
    for step in range(4):
        manager.maybe_sample(model, step)
    assert manager.flat_rollouts["scripted"] == 4 and not _warnings(caplog)
    with pytest.raises(ValueError, match="no_signal_after must be >= 0"):
        _manager(tok, [], no_signal_after=-1)


def test_state_dict_keeps_the_count_and_old_checkpoints_load(tiny, prompt_file, caplog):
    """A resumed manager continues the streak (4 after 3 + 1, no second warning); a
    checkpoint written before the counts existed loads with them at 0."""
    model, tok = tiny
    m1 = _manager(tok, [Scripted("scripted", str(prompt_file), [True])])
    for step in range(3):
        m1.maybe_sample(model, step)
    state = m1.state_dict()
    assert state["signal"] == {"scripted": {"flat_rollouts": 3, "flat_costs": [1.0] * 3}}
    caplog.set_level(logging.WARNING, logger="pdalign")
    caplog.clear()  # m1 warned at its third rollout
    m2 = _manager(tok, [Scripted("scripted", str(prompt_file), [True])])
    m2.load_state_dict(state)
    assert m2.flat_rollouts == {"scripted": 3}
    assert m2.signal_stats() == m1.signal_stats()
    m2.maybe_sample(model, 3)
    assert m2.flat_rollouts == {"scripted": 4} and not _warnings(caplog)
    old = {k: v for k, v in state.items() if k != "signal"}
    m3 = _manager(tok, [Scripted("scripted", str(prompt_file), [True])])
    m3.load_state_dict(old)
    assert m3.flat_rollouts == {"scripted": 0}


def test_mixed_constants_are_named_in_turn(tiny, prompt_file, caplog):
    """Each rollout flat but at its own value (1, 0, 1): still no gradient in any of them."""
    model, tok = tiny

    class Alternating(Scripted):
        def cost(self, prompts, responses, response_lengths):
            self.calls += 1
            return torch.full((len(prompts),), float(self.calls % 2))

    manager = _manager(tok, [Alternating("scripted", str(prompt_file), [True])])
    caplog.set_level(logging.WARNING, logger="pdalign")
    for step in range(3):
        manager.maybe_sample(model, step)
    (message,) = _warnings(caplog)
    assert "costs the same (1.0, 0.0, 1.0 in turn)" in message


def test_no_spread_tolerance():
    """Relative to the largest |cost|: one float32 ulp at a cost of 40 (3.8e-6) is no spread,
    one token is; all-zero costs have none; tiny costs that differ do."""
    assert no_spread(0.0, 0.0) and no_spread(0.0, 1.0)
    assert no_spread(3.8e-6, 40.0) and not no_spread(1.0, 40.0)
    assert not no_spread(1e-12, 2e-12)


# ---- at the generation budget -----------------------------------------------------------------

def test_at_budget_share_counts_responses_that_used_the_whole_budget(tiny, tmp_path,
                                                                      monkeypatch):
    """max_new_tokens = 5 and four sampled rows (EOS counted in the length):

    row 0: a b EOS (then padding)  -> 3 tokens, ended early;
    row 1: a b c d e               -> 5, cut at the budget;
    row 2: a b c d EOS             -> 5, its EOS on the last slot: the Length cost is 5 too;
    row 3: a EOS                   -> 2.
    at_budget = 2 / 4 = 0.5; the Length costs 3, 5, 5, 2 spread 5 - 2 = 3.
    """
    model, tok = tiny
    eos = tok.eos_token_id
    new = torch.tensor([[1011, 1012, eos, eos, eos], [1021, 1022, 1023, 1024, 1025],
                        [1031, 1032, 1033, 1034, eos], [1041, eos, eos, eos, eos]])

    monkeypatch.setattr(sampling, "decode", scripted_decode(new, eos))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}?"}) + "\n" for i in range(4)))
    manager = RolloutManager([Length(epsilon=2.0, prompts=str(path))], tok, every=1,
                             prompts_per_rollout=4, max_new_tokens=5, batch_size=4, seed=0)
    manager.maybe_sample(model, 0)
    assert manager.rollouts["length"].response_lengths.tolist() == [3, 5, 5, 2]
    assert manager.signal_stats() == {"signal/length/spread": 3.0,
                                      "signal/length/at_budget": 0.5,
                                      "signal/length/flat_rollouts": 0.0,
                                      "signal/length/silent_when_flat": 1.0}


def test_report_reads_what_the_manager_writes(tmp_path):
    """One writer, one parser: records keyed by `signal_key` are what `signal_health` reads."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"seed": 0, "method": {
        "name": "primal_dual", "objective": "dpo", "constrained": True}}))
    rows = [{"step": t, "lambda/refusal": 1.0, "g/refusal": 1.0,
             signal_key("refusal", "spread"): 0.0, signal_key("refusal", "at_budget"): 0.0,
             signal_key("refusal", "flat_rollouts"): float(t)} for t in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert signal_health(collect_runs(tmp_path)[0], "refusal") == ("no signal", 1.0)


@pytest.mark.parametrize("estimator,flagged", [("sampled", True), ("stop", False)])
def test_flat_lengths_are_no_signal_for_sampled_only(tiny, prompt_file, tmp_path, caplog,
                                                     estimator, flagged):
    """Three fresh rollouts at a 2-token budget, where the tiny model (pi(EOS) ~ 1/V) fills
    the budget every time: every sample costs 2, so flat_rollouts reaches 3 either way. With
    the sampled estimator that means zero gradient: the warning, silent_when_flat 1, and the
    report's "no signal" at cost 2. The stop estimator still has a gradient there: no warning,
    silent_when_flat 0, "ok" in the report; the share at the budget (1.0) is logged for both."""
    model, tok = tiny
    length = Length(epsilon=1.5, prompts=str(prompt_file), estimator=estimator)
    manager = RolloutManager([length], tok, every=1, prompts_per_rollout=3, max_new_tokens=2,
                             seed=0)
    caplog.set_level(logging.WARNING, logger="pdalign")
    rows = []
    for step in range(3):
        manager.maybe_sample(model, step)
        rows.append({"step": step + 1, "lambda/length": 1.0, "g/length": 2.0,
                     **manager.signal_stats()})
    assert manager.rollouts["length"].response_lengths.tolist() == [2, 2, 2]
    assert rows[-1] == {"step": 3, "lambda/length": 1.0, "g/length": 2.0,
                        "signal/length/spread": 0.0, "signal/length/at_budget": 1.0,
                        "signal/length/flat_rollouts": 3.0,
                        "signal/length/silent_when_flat": 1.0 if flagged else 0.0}
    assert len(_warnings(caplog)) == (1 if flagged else 0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"seed": 0, "method": {
        "name": "primal_dual", "objective": "dpo", "constrained": True}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    health = signal_health(collect_runs(tmp_path)[0], "length")
    assert health == (("no signal", 2.0) if flagged else ("ok", None))


# ---- Length.check_budget ----------------------------------------------------------------------

def test_length_epsilon_at_the_budget_is_a_config_error():
    with pytest.raises(ValueError) as err:
        Length(epsilon=40).check_budget(40, "train.rollout.max_new_tokens")
    assert str(err.value) == (
        "constraints.length.epsilon=40 is not below train.rollout.max_new_tokens=40: every "
        "response is capped at 40 tokens, so the bound can never bind and, once the policy "
        "fills the budget, its samples never vary. Raise train.rollout.max_new_tokens (e.g. to "
        "80 = 2 x epsilon) or lower constraints.length.epsilon")
    with pytest.raises(ValueError, match=r"^constraints\.length\.epsilon=48 is not below "
                                         r"eval\.max_new_tokens=40: .* to 96 = 2 x epsilon"):
        Length(epsilon=48).check_budget(40, "eval.max_new_tokens")
    with pytest.raises(ValueError, match=r"constraints\.tokens\.epsilon=40\.5 .* to 81 = 2 x"):
        Length(name="tokens", epsilon=40.5).check_budget(40, "eval.max_new_tokens")


def test_length_epsilon_below_the_budget_passes():
    Length(epsilon=39.5).check_budget(40, "train.rollout.max_new_tokens")
    Length(epsilon=32).check_budget(64, "eval.max_new_tokens")


def test_relative_length_is_checked_once_calibrated():
    """Before calibration the configured epsilon is a placeholder and not checked. A reference
    that fills the 40-token budget gives epsilon = 1.2 x 40 = 48 >= 40: the error names the
    ratio and the ratio that would fit (40 / 40 = 1); ratio 0.5 gives 20, fine."""
    length = Length(epsilon=40, relative_to_reference=True, ratio=1.2)
    length.check_budget(40, "train.rollout.max_new_tokens")  # placeholder epsilon: no check
    length.calibrate(torch.full((4,), 40.0))
    with pytest.raises(ValueError, match=r"^constraints\.length\.epsilon=48 \(relative_to_"
                                         r"reference: 1\.2 x the reference's mean length 40\.0 "
                                         r"tokens\) is not below train\.rollout\.max_new_tokens="
                                         r"40: .* Lower constraints\.length\.ratio below 1, or "
                                         r"raise train\.rollout\.max_new_tokens"):
        length.check_budget(40, "train.rollout.max_new_tokens")
    half = Length(relative_to_reference=True, ratio=0.5)
    half.calibrate(torch.full((4,), 40.0))
    half.check_budget(40, "train.rollout.max_new_tokens")
