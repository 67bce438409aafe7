"""Preference losses against numbers worked by hand, plus property tests."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdalign.objectives.losses import dpo_loss, nll_loss, orpo_loss, preference_metrics, simpo_loss
from pdalign.objectives.preference import DPO, ORPO, SimPO


def t(*xs: float, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=dtype, requires_grad=grad)


# A pair with gap h = 1: policy log-ratio (-1) - (-2) = 1, reference log-ratio 0.
PC, PR, RC, RR = -1.0, -2.0, -1.5, -1.5


# --- DPO family ------------------------------------------------------------------------


def test_dpo_sigmoid_hand_value():
    """h = (-1 - -2) - (-1.5 - -1.5) = 1, beta = 0.1.

    loss = -log sigmoid(0.1) = log(1 + e^-0.1) = log(1 + 0.904837) = log(1.904837) = 0.644397
    rewards: chosen 0.1 * (-1 - -1.5) = 0.05, rejected 0.1 * (-2 - -1.5) = -0.05.
    """
    losses, cr, rr = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1)
    assert losses.item() == pytest.approx(0.644397, abs=1e-6)
    assert cr.item() == pytest.approx(0.05, abs=1e-12)
    assert rr.item() == pytest.approx(-0.05, abs=1e-12)


def test_dpo_label_smoothing_hand_value():
    """h = 1, beta = 0.1, ls = 0.1.

    loss = 0.9 * softplus(-0.1) + 0.1 * softplus(0.1), and softplus(x) = x + softplus(-x), so
    loss = softplus(-0.1) + 0.1 * 0.1 = 0.644397 + 0.01 = 0.654397.
    """
    losses, _, _ = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.654397, abs=1e-6)


def test_dpo_hinge_hand_values():
    """beta = 0.1. h = 1: relu(1 - 0.1) = 0.9. h = 20 (policy gap 20): relu(1 - 2) = 0."""
    losses, _, _ = dpo_loss(t(PC, -1.0), t(PR, -21.0), t(RC, 0.0), t(RR, 0.0), 0.1, "hinge")
    assert losses.tolist() == pytest.approx([0.9, 0.0], abs=1e-12)


def test_dpo_ipo_hand_values():
    """beta = 0.1 -> target 1/(2*0.1) = 5. h = 1: (1 - 5)^2 = 16. h = 5: 0.

    beta = 0.5 -> target 1. h = 3: (3 - 1)^2 = 4.
    """
    losses, _, _ = dpo_loss(t(PC, -1.0), t(PR, -6.0), t(RC, 0.0), t(RR, 0.0), 0.1, "ipo")
    assert losses.tolist() == pytest.approx([16.0, 0.0], abs=1e-12)
    losses, _, _ = dpo_loss(t(-1.0), t(-4.0), t(0.0), t(0.0), 0.5, "ipo")
    assert losses.item() == pytest.approx(4.0, abs=1e-12)


def test_dpo_unknown_loss_type_names_allowed_values():
    with pytest.raises(ValueError, match=r"\['hinge', 'ipo', 'sigmoid'\]"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), 0.1, loss_type="kto")
    with pytest.raises(ValueError, match="sigmoid"):
        DPO(loss_type="robust")


def test_label_smoothing_only_with_sigmoid():
    with pytest.raises(ValueError, match="label_smoothing"):
        DPO(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPO(label_smoothing=0.5)


def test_dpo_rewards_are_detached_and_ref_gets_no_grad():
    pc, pr, rc, rr = t(PC, grad=True), t(PR, grad=True), t(RC, grad=True), t(RR, grad=True)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, 0.1)
    assert not cr.requires_grad and not rj.requires_grad
    losses.sum().backward()
    assert rc.grad is None and rr.grad is None


# --- SimPO, ORPO, NLL -------------------------------------------------------------------


def test_simpo_hand_values():
    """c = -0.5, r = -1.0 (mean log-probs), beta = 2.

    gamma = 1: 2 * 0.5 - 1 = 0 -> loss = -log sigmoid(0) = log 2 = 0.693147.
    gamma = 0: logits 1 -> loss = log(1 + e^-1) = log(1.367879) = 0.313262.
    rewards = beta * logps = -1.0 and -2.0.
    """
    losses, cr, rr = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=1.0)
    assert losses.item() == pytest.approx(0.693147, abs=1e-6)
    assert (cr.item(), rr.item()) == (-1.0, -2.0)
    losses, _, _ = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.0)
    assert losses.item() == pytest.approx(0.313262, abs=1e-6)


def test_orpo_hand_value():
    """c = log 0.5 -> odds 0.5/0.5 = 1, log odds 0. r = log 0.2 -> odds 0.2/0.8 = 0.25.

    log odds ratio = 0 - log 0.25 = log 4 = 1.386294.
    or_loss = -beta * log sigmoid(log 4) = beta * log(1 + 1/4) = 0.1 * 0.223144 = 0.0223144.
    """
    or_losses, lor = orpo_loss(t(math.log(0.5)), t(math.log(0.2)), beta=0.1)
    assert lor.item() == pytest.approx(1.386294, abs=1e-6)
    assert or_losses.item() == pytest.approx(0.0223144, abs=1e-7)


def test_orpo_log_odds_against_direct_float64_formula():
    """log odds(y) = log(p / (1 - p)) with p = exp(logp), evaluated directly in float64."""
    logps = [-1e-3, -0.1, -0.6, -0.7, -2.0, -5.0, -30.0]
    for lc in logps:
        for lr in logps:
            _, lor = orpo_loss(t(lc), t(lr), beta=1.0)
            pc, pr = math.exp(lc), math.exp(lr)
            direct = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
            assert lor.item() == pytest.approx(direct, rel=1e-9, abs=1e-9)
            # fp32 agrees to fp32 precision on both sides of the -ln 2 branch point
            _, lor32 = orpo_loss(t(lc, dtype=torch.float32), t(lr, dtype=torch.float32), 1.0)
            assert lor32.item() == pytest.approx(direct, rel=1e-4, abs=1e-4)


# The largest bf16 value below 0 is minus the smallest subnormal, 2^-133.
BF16_MAX_NEG = -(2.0**-133)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logp", [-1e-8, BF16_MAX_NEG, -torch.finfo(torch.float32).tiny, 0.0,
                                  -1e-3, -100.0])
def test_orpo_finite_near_zero_and_far(dtype, logp):
    c = torch.tensor([logp, -1.0, logp], dtype=dtype, requires_grad=True)
    r = torch.tensor([-1.0, logp, -100.0], dtype=dtype, requires_grad=True)
    if logp == BF16_MAX_NEG and dtype == torch.bfloat16:
        assert c[0].item() < 0  # the value really is representable and negative
    or_losses, lor = orpo_loss(c, r, beta=0.1)
    assert or_losses.dtype == dtype
    assert torch.isfinite(or_losses).all() and torch.isfinite(lor).all()
    or_losses.sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


@pytest.mark.parametrize("beta", [0.1, 8.0, 10.0])
def test_orpo_gradient_finite_at_minus_tiny_with_large_beta(beta):
    """Regression: hypothesis found r = -1.17549e-38 (-finfo.tiny), beta = 8 gave an inf grad
    (d log-odds / d logp ~ 1/|logp| times beta overflows fp32); the -1e-6 clamp keeps it
    finite."""
    c = torch.tensor([0.0], requires_grad=True)
    r = torch.tensor([-torch.finfo(torch.float32).tiny], requires_grad=True)
    orpo_loss(c, r, beta)[0].sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_nll_hand_value():
    """sum of token log-probs -6 over 3 tokens -> mean NLL 6/3 = 2; 0 tokens is clamped to 1."""
    assert nll_loss(t(-6.0, -1.5), t(3.0, 0.0)).tolist() == [2.0, 1.5]


# --- gradient signs -----------------------------------------------------------------------


def _grads(fn):
    c, r = t(-1.0, grad=True), t(-2.0, grad=True)
    fn(c, r).sum().backward()
    return c.grad.item(), r.grad.item()


@pytest.mark.parametrize(
    "name, fn",
    [
        # h = 1, beta = 0.1: inside the hinge's active region and below IPO's target 5.
        ("sigmoid", lambda c, r: dpo_loss(c, r, t(-1.5), t(-1.5), 0.1)[0]),
        ("sigmoid_ls", lambda c, r: dpo_loss(c, r, t(-1.5), t(-1.5), 0.1, "sigmoid", 0.2)[0]),
        ("hinge", lambda c, r: dpo_loss(c, r, t(-1.5), t(-1.5), 0.1, "hinge")[0]),
        ("ipo", lambda c, r: dpo_loss(c, r, t(-1.5), t(-1.5), 0.1, "ipo")[0]),
        ("simpo", lambda c, r: simpo_loss(c / 4, r / 4, 2.0, 1.0)[0]),
        ("orpo", lambda c, r: orpo_loss(c / 4, r / 4, 0.1)[0]),
    ],
)
def test_gradient_signs(name, fn):
    """Lowering the loss must raise the chosen log-prob and lower the rejected one."""
    dc, dr = _grads(fn)
    assert dc < 0, name
    assert dr > 0, name


# --- objectives -----------------------------------------------------------------------


def _out(**kw: float) -> dict[str, torch.Tensor]:
    return {k: t(v) for k, v in kw.items()}


def test_objective_flags():
    assert DPO().needs_reference and DPO(loss_type="hinge").needs_reference
    assert DPO(loss_type="ipo").needs_reference
    assert not DPO().uses_mean_logps and DPO(loss_type="ipo").uses_mean_logps
    assert not SimPO().needs_reference and SimPO().uses_mean_logps
    assert not ORPO().needs_reference and ORPO().uses_mean_logps


def test_dpo_objective_with_nll_hand_value():
    """Summed log-probs as in test_dpo_sigmoid_hand_value: DPO loss 0.644397.

    NLL = -(-1)/2 tokens = 0.5; nll_weight 0.5 -> total 0.644397 + 0.25 = 0.894397.
    """
    out = _out(chosen_logps=PC, rejected_logps=PR, ref_chosen_logps=RC, ref_rejected_logps=RR,
               chosen_n_tokens=2.0, rejected_n_tokens=5.0)
    losses, metrics = DPO(beta=0.1, nll_weight=0.5)(out)
    assert losses.item() == pytest.approx(0.894397, abs=1e-6)
    assert metrics["nll"] == pytest.approx(0.5)
    assert metrics["rewards/margins"] == pytest.approx(0.1)
    assert metrics["rewards/accuracies"] == 1.0
    assert metrics["logps/chosen"] == PC and metrics["logps/rejected"] == PR


def test_ipo_objective_uses_mean_logps():
    """Sums (n): chosen -4 (2), rejected -6 (3), ref chosen -2 (2), ref rejected -9 (3).

    Means: -2, -2, -1, -3 -> h = (-2 - -2) - (-1 - -3) = -2; beta 0.5 -> (-2 - 1)^2 = 9.
    (Summed log-probs would give h = 2 - 7 = -5 and (-6)^2 = 36.)
    """
    out = _out(chosen_logps=-4.0, rejected_logps=-6.0, ref_chosen_logps=-2.0,
               ref_rejected_logps=-9.0, chosen_n_tokens=2.0, rejected_n_tokens=3.0)
    losses, _ = DPO(beta=0.5, loss_type="ipo")(out)
    assert losses.item() == pytest.approx(9.0, abs=1e-12)


class _NoRefDict(dict):
    def __getitem__(self, key):
        assert not key.startswith("ref_"), f"reference-free objective read {key}"
        return super().__getitem__(key)


def test_simpo_objective_without_ref_keys():
    """chosen -1 over 2 tokens -> -0.5, rejected -3 over 3 -> -1; beta 2, gamma 1 -> log 2."""
    out = _NoRefDict(_out(chosen_logps=-1.0, rejected_logps=-3.0, chosen_n_tokens=2.0,
                          rejected_n_tokens=3.0))
    losses, metrics = SimPO(beta=2.0, gamma=1.0)(out)
    assert losses.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["rewards/chosen"] == -1.0 and metrics["rewards/rejected"] == -2.0


def test_orpo_objective_without_ref_keys():
    """Means log 0.5 (2 tokens) and log 0.2 (3 tokens): or_loss 0.0223144 (test_orpo_hand_value).

    NLL = -log 0.5 = 0.693147 -> total 0.715461. Rewards = 0.1 * mean logps.
    """
    out = _NoRefDict(_out(chosen_logps=2 * math.log(0.5), rejected_logps=3 * math.log(0.2),
                          chosen_n_tokens=2.0, rejected_n_tokens=3.0))
    losses, metrics = ORPO(beta=0.1)(out)
    assert losses.item() == pytest.approx(0.715461, abs=1e-6)
    assert metrics["log_odds_ratio"] == pytest.approx(math.log(4))
    assert metrics["nll"] == pytest.approx(0.693147, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.1 * math.log(0.5))


def test_preference_metrics_means():
    """Rewards (1, -1) vs (0, 0): margins mean 0, accuracy 1/2."""
    m = preference_metrics(t(1.0, -1.0), t(0.0, 0.0), t(-3.0, -5.0), t(-6.0, -8.0),
                           {"nll": t(1.0, 2.0)})
    assert m == {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
                 "rewards/accuracies": 0.5, "logps/chosen": -4.0, "logps/rejected": -7.0,
                 "nll": 1.5}
    assert all(type(v) is float for v in m.values())


def test_invalid_hyperparameters_fail_at_construction():
    for bad in (lambda: DPO(beta=0.0), lambda: SimPO(gamma=-1.0), lambda: ORPO(beta=float("nan")),
                lambda: DPO(nll_weight=-0.1)):
        with pytest.raises(ValueError):
            bad()


# --- properties -----------------------------------------------------------------------

DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
SUM_LOGP = st.floats(min_value=-1e4, max_value=0.0)  # summed log-probs
MEAN_LOGP = st.floats(min_value=-100.0, max_value=0.0)  # per-token means
BETA = st.floats(min_value=0.01, max_value=10.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(SUM_LOGP, min_size=4, max_size=4), BETA, DTYPES,
       st.sampled_from(["sigmoid", "hinge", "ipo"]))
def test_dpo_finite_property(xs, beta, dtype, loss_type):
    args = [torch.tensor([x], dtype=dtype, requires_grad=True) for x in xs]
    losses, cr, rr = dpo_loss(*args, beta, loss_type)
    assert torch.isfinite(losses).all() and torch.isfinite(cr).all() and torch.isfinite(rr).all()
    losses.sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args[:2])


@settings(max_examples=150, deadline=None)
@given(MEAN_LOGP, MEAN_LOGP, BETA, st.floats(0.0, 5.0), DTYPES)
def test_simpo_and_orpo_finite_property(c, r, beta, gamma, dtype):
    simpo = lambda a, b: simpo_loss(a, b, beta, gamma)[0]  # noqa: E731
    orpo = lambda a, b: orpo_loss(a, b, beta)[0]  # noqa: E731
    for fn in (simpo, orpo):
        a = torch.tensor([c], dtype=dtype, requires_grad=True)
        b = torch.tensor([r], dtype=dtype, requires_grad=True)
        loss = fn(a, b)
        assert torch.isfinite(loss).all()
        loss.sum().backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=-1e-6, max_value=0.0), st.floats(-50.0, 0.0), DTYPES)
def test_orpo_finite_as_logp_goes_to_zero(c, r, dtype):
    a = torch.tensor([c], dtype=dtype, requires_grad=True)
    b = torch.tensor([r], dtype=dtype, requires_grad=True)
    or_losses, lor = orpo_loss(a, b, 0.1)
    assert torch.isfinite(or_losses).all() and torch.isfinite(lor).all()
    or_losses.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-50.0, 0.0), min_size=4, max_size=4), BETA)
def test_dpo_swap_identities(xs, beta):
    """Swapping chosen and rejected (policy and reference) maps h to -h, so in float64:

    sigmoid: softplus(-b h) - softplus(b h) = -b h;   ipo: (h - a)^2 - (-h - a)^2 = -4 a h
    with a = 1/(2b), i.e. -2h/b; rewards swap places.
    """
    pc, pr, rc, rr = (t(x) for x in xs)
    h = (xs[0] - xs[1]) - (xs[2] - xs[3])
    fwd, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    back, cr2, rj2 = dpo_loss(pr, pc, rr, rc, beta)
    assert (fwd - back).item() == pytest.approx(-beta * h, rel=1e-9, abs=1e-9)
    assert torch.equal(cr, rj2) and torch.equal(rj, cr2)
    fwd, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo")
    back, _, _ = dpo_loss(pr, pc, rr, rc, beta, "ipo")
    assert (fwd - back).item() == pytest.approx(-2 * h / beta, rel=1e-9, abs=1e-6)
