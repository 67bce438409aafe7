"""DualState: hand-worked gradient and PID sequences, clipping, checkpointing, health."""

from __future__ import annotations

import io

import pytest
import torch

from pdalign.training.dual import DualState


def v(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def run(dual: DualState, gs: list[float], eps: float) -> list[float]:
    return [dual.update(v(g), v(eps)).item() for g in gs]


# --- gradient rule ----------------------------------------------------------------------


def test_gradient_rule_hand_values():
    """lr = 0.5, eps = 0.3, lambda_0 = 0.

    g = 0.7: 0 + 0.5 * 0.4 = 0.2;  g = 0.5: 0.2 + 0.5 * 0.2 = 0.3;  g = 0.1: 0.3 - 0.1 = 0.2.
    """
    dual = DualState(["tox"], lr=0.5)
    assert run(dual, [0.7, 0.5, 0.1], 0.3) == pytest.approx([0.2, 0.3, 0.2], abs=1e-15)
    assert dual.step == 3


def test_gradient_rule_clips_at_zero_and_lambda_max():
    """lambda_0 = 0.1, lr = 1, eps = 1, g = 0: 0.1 - 1 = -0.9 -> 0.

    lambda_max = 1, g = 10, eps = 0: 0 + 10 -> 1.
    """
    dual = DualState(["a"], lr=1.0, lambda_init=0.1)
    assert run(dual, [0.0], 1.0) == [0.0]
    dual = DualState(["a"], lr=1.0, lambda_max=1.0)
    assert run(dual, [10.0, 10.0], 0.0) == [1.0, 1.0]


def test_per_constraint_lambda_max():
    """lr = 1, g = (10, 10), eps = 0, lambda_max = (1, 5): one step gives (1, 5)."""
    dual = DualState(["a", "b"], lr=1.0, lambda_max=[1.0, 5.0])
    assert dual.update(v(10.0, 10.0), v(0.0, 0.0)).tolist() == [1.0, 5.0]


def test_scale_reads_each_violation_in_its_own_unit():
    """lr = 1, eps = (32 tokens, 0.2), g = (48, 0.6), scale = (32, 1).

    gradient: lambda = (16/32, 0.4) = (0.5, 0.4); weights = lambda/scale = (0.5/32, 0.4).
    Then g = (16, 0.2): lambda = (0.5 - 16/32, 0.4 + 0) = (0, 0.4).
    pid (kp = 1, ki = 1): I = (0.5, 0.4), P = (0.5, 0.4), lambda = (1.0, 0.8).
    """
    dual = DualState(["length", "refusal"], lr=1.0, scale=[32.0, 1.0])
    assert dual.update(v(48.0, 0.6), v(32.0, 0.2)).tolist() == pytest.approx([0.5, 0.4])
    assert dual.weights.tolist() == pytest.approx([0.5 / 32, 0.4])
    assert dual.update(v(16.0, 0.2), v(32.0, 0.2)).tolist() == pytest.approx([0.0, 0.4])
    pid = DualState(["length", "refusal"], rule="pid", kp=1.0, ki=1.0, scale=[32.0, 1.0])
    assert pid.update(v(48.0, 0.6), v(32.0, 0.2)).tolist() == pytest.approx([1.0, 0.8])


def test_scale_is_the_same_constraint_in_other_units():
    """g <= eps read with scale s is g/s <= eps/s read with scale 1: the same lambda, and
    weights * g equal to lambda * g/s (the primal term), at every step."""
    gs = [40.0, 44.0, 30.0, 20.0, 36.0]
    scaled = DualState(["a"], lr=0.7, lambda_max=2.0, ema=0.3, scale=8.0)
    plain = DualState(["a"], lr=0.7, lambda_max=2.0, ema=0.3)
    for g in gs:
        lam = scaled.update(v(g), v(32.0))
        assert lam.tolist() == pytest.approx(plain.update(v(g / 8), v(4.0)).tolist(), abs=1e-12)
        assert float(scaled.weights * g) == pytest.approx(float(plain.lam * g / 8), abs=1e-12)
    assert 0 < scaled.lam.item() < 2.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_scale_names_the_constraint(bad):
    with pytest.raises(ValueError, match=r"^constraints\.b\.scale must be a finite number > 0"):
        DualState(["a", "b"], scale=[1.0, bad])


def test_violated_rises_satisfied_stays_at_zero():
    dual = DualState(["violated", "satisfied"], lr=0.1)
    lams = [dual.update(v(0.5, 0.1), v(0.2, 0.2)).tolist() for _ in range(5)]
    assert all(b[0] > a[0] for a, b in zip(lams, lams[1:]))
    assert all(lam[1] == 0.0 for lam in lams)


def test_ema_of_g_hat():
    """ema = 0.5, lr = 1, eps = 0. g = 1 seeds the EMA: g~ = 1, lambda = 1.

    g = 3: g~ = 0.5 * 1 + 0.5 * 3 = 2, lambda = 1 + 2 = 3.
    g = 0: g~ = 0.5 * 2 + 0 = 1, lambda = 3 + 1 = 4.
    """
    dual = DualState(["a"], lr=1.0, ema=0.5)
    assert run(dual, [1.0, 3.0, 0.0], 0.0) == [1.0, 3.0, 4.0]


# --- PID rule -----------------------------------------------------------------------------


def test_pid_hand_sequence():
    """kp = 1, ki = 0.5, kd = 2, no smoothing, eps = 0.5, lambda_max = 10.

    step g    Delta  I = max(0, I + 0.5 Delta)  P     D = max(0, g - g_prev)  lambda
    1    1.0  0.5    0.25                        0.5   0 (first step)          0.75
    2    1.5  1.0    0.75                        1.0   0.5                     1 + .75 + 1 = 2.75
    3    1.0  0.5    1.0                         0.5   0                       1.5
    4    0.0  -0.5   0.75                        -0.5  0                       0.25
    5    0.0  -0.5   0.5                         -0.5  0                       0
    6    0.0  -0.5   0.25                        -0.5  0                       0 (clip at 0)
    """
    dual = DualState(["a"], rule="pid", kp=1.0, ki=0.5, kd=2.0)
    assert run(dual, [1.0, 1.5, 1.0, 0.0, 0.0, 0.0], 0.5) == [0.75, 2.75, 1.5, 0.25, 0.0, 0.0]
    assert dual.integral.item() == 0.25


def test_pid_smoothed_p_and_d_terms():
    """kp = 1, ki = 0, kd = 1, p_ema = d_ema = 0.5, eps = 0.

    1: g = 1: P = 1 (seed), C = 1 (seed), D = 0             -> lambda = 1
    2: g = 3: P = .5*1 + .5*3 = 2, C = 2, D = 2 - 1 = 1     -> lambda = 3
    3: g = 3: P = .5*2 + .5*3 = 2.5, C = 2.5, D = 0.5       -> lambda = 3
    """
    dual = DualState(["a"], rule="pid", kp=1.0, ki=0.0, kd=1.0, p_ema=0.5, d_ema=0.5)
    assert run(dual, [1.0, 3.0, 3.0], 0.0) == [1.0, 3.0, 3.0]


def test_pid_integral_starts_at_lambda_init():
    """ki = kp = kd = 0: lambda stays at the integral's start, lambda_init = 0.5."""
    dual = DualState(["a"], rule="pid", kp=0.0, ki=0.0, lambda_init=0.5)
    assert run(dual, [2.0, 0.0], 1.0) == [0.5, 0.5]


def test_pid_integral_anti_windup():
    """ki = 1, lambda_max = 1, eps = 0. Three steps at g = 5 would wind I to 15; capped at 1.

    Then g = 0 with eps = 1 (Delta = -1): I = max(0, 1 - 1) = 0, so lambda drops at once
    (an uncapped integral would sit at 14 and keep lambda pinned at 1).
    """
    dual = DualState(["a"], rule="pid", ki=1.0, lambda_max=1.0)
    assert run(dual, [5.0, 5.0, 5.0], 0.0) == [1.0, 1.0, 1.0]
    assert run(dual, [0.0], 1.0) == [0.0]


# --- checkpointing, determinism ----------------------------------------------------------


def _pid() -> DualState:
    return DualState(["a", "b"], rule="pid", kp=0.7, ki=0.3, kd=0.4, p_ema=0.2, d_ema=0.6,
                     ema=0.3, lambda_max=[3.0, 2.0], window=4)


G_SEQ = [(0.9, 0.1), (1.3, 0.4), (0.2, 0.9), (0.8, 0.05), (1.1, 0.3), (0.4, 0.6), (0.5, 0.5)]


def test_state_dict_round_trip_continues_identically():
    a = _pid()
    for g in G_SEQ[:4]:
        a.update(v(*g), v(0.5, 0.3))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _pid()
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.step == a.step == 4
    for g in G_SEQ[4:]:
        assert torch.equal(a.update(v(*g), v(0.5, 0.3)), b.update(v(*g), v(0.5, 0.3)))
    for key, value in a.state_dict().items():
        other = b.state_dict()[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_load_state_dict_rejects_other_constraints():
    with pytest.raises(ValueError, match="same constraint list"):
        DualState(["b", "a"]).load_state_dict(DualState(["a", "b"]).state_dict())


def test_same_g_hat_gives_bit_identical_lambda():
    """Two 'ranks' fed the same all-reduced g_hat (one as fp32, one as fp64) agree exactly."""
    a, b = _pid(), _pid()
    for g in G_SEQ:
        g32 = torch.tensor(g, dtype=torch.float32)
        la = a.update(g32, v(0.5, 0.3))
        lb = b.update(g32.to(torch.float64), v(0.5, 0.3))
        assert torch.equal(la, lb)
        assert la.dtype == torch.float64 and la.device.type == "cpu"


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), -1.0, float("nan"), [1.0, float("inf")],
                                 [1.0, 2.0, 3.0]])
def test_invalid_lambda_max(bad):
    with pytest.raises(ValueError, match="dual.lambda_max"):
        DualState(["a", "b"], lambda_max=bad)


def test_invalid_config_values_name_their_key():
    cases = [({"lambda_init": 2.0, "lambda_max": 1.0}, "dual.lambda_init"),
             ({"rule": "adam"}, "dual.rule"), ({"lr": -0.1}, "dual.lr"),
             ({"ema": 1.0}, "dual.ema"), ({"d_ema": -0.5}, "dual.d_ema"),
             ({"kd": float("nan")}, "dual.kd"), ({"window": 0}, "dual.window")]
    for kwargs, key in cases:
        with pytest.raises(ValueError, match=key):
            DualState(["a"], **kwargs)


def test_invalid_epsilon_and_shape():
    dual = DualState(["a", "b"])
    with pytest.raises(ValueError, match="epsilon"):
        dual.update(v(0.1, 0.2), v(0.1, float("nan")))
    with pytest.raises(ValueError, match="epsilon"):
        dual.update(v(0.1, 0.2), v(0.1))
    with pytest.raises(ValueError, match="g_hat"):
        dual.update(v(0.1), v(0.1, 0.1))


@pytest.mark.parametrize("rule", ["gradient", "pid"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_g_hat_skips_the_step(rule, bad):
    dual = DualState(["a", "b"], rule=rule, lr=0.5, ki=0.5)
    before = dual.update(v(1.0, 1.0), v(0.0, 0.0))
    state = dual.state_dict()
    after = dual.update(v(bad, 1.0), v(0.0, 0.0))
    assert torch.equal(after, before) and torch.isfinite(after).all()
    assert dual.last_skipped and dual.n_skipped == 1 and dual.step == 1
    assert torch.equal(dual.integral, state["integral"])
    assert torch.equal(dual.g_ema, state["g_ema"])
    dual.update(v(1.0, 1.0), v(0.0, 0.0))
    assert not dual.last_skipped and dual.step == 2 and torch.isfinite(dual.lam).all()


# --- health -------------------------------------------------------------------------------


def test_stalled_reports_lambda_held_at_max_for_a_window():
    """window = 3: a lambda at its cap for 3 updates in a row is flagged; one that touched the
    cap at the first update and fell back is not; lambda_max = 0 (off) never is."""
    dual = DualState(["capped", "fine", "off", "touched"], lr=1.0,
                     lambda_max=[1.0, 10.0, 0.0, 2.0], window=3)
    costs = [v(5.0, 0.0, 5.0, 5.0), v(5.0, 0.0, 5.0, 0.0), v(5.0, 0.0, 5.0, 0.0)]
    flags = [(dual.update(c, v(0.0, 0.5, 0.0, 1.0)), dual.stalled())[1] for c in costs]
    assert flags == [[], [], [0]]
    assert dual.lam.tolist() == [1.0, 0.0, 0.0, 0.0]  # 'touched': 0 -> 2 (cap) -> 1 -> 0


def test_stalled_reports_monotone_rise_over_window():
    """window = 3: flagged only once 3 consecutive updates have all raised lambda."""
    dual = DualState(["rising", "settled"], lr=0.01, window=3)
    flags = [(dual.update(v(1.0, 0.2), v(0.5, 0.5)), dual.stalled())[1] for _ in range(4)]
    assert flags == [[], [], [0], [0]]
    dual.update(v(0.0, 0.2), v(0.5, 0.5))  # one falling step breaks the run
    assert dual.stalled() == []


def test_as_dict():
    dual = DualState(["tox", "kl"], lr=1.0)
    dual.update(v(0.5, 0.0), v(0.25, 0.1))
    assert dual.as_dict() == {"lambda/tox": 0.25, "lambda/kl": 0.0}


def test_hydra_list_config_and_no_constraints():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"names": ["a", "b"], "lambda_max": [1.0, 2.0]})
    dual = DualState(cfg.names, lambda_max=cfg.lambda_max, lr=1.0)
    assert dual.update(v(5.0, 5.0), v(0.0, 0.0)).tolist() == [1.0, 2.0]
    empty = DualState([])
    assert empty.update(v(), v()).numel() == 0 and empty.stalled() == []
