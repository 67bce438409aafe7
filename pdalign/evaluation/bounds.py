"""One-sided confidence bounds for held-out constraint values: pure functions of counts and means.

Which bound a certificate row uses (`pdalign.evaluation.heldout.cost_bound` picks it from what the constraint
declares about its costs):

=============================  ===================================================  ========
name                           used for                                             level
=============================  ===================================================  ========
``clopper_pearson``            binary costs (refusal, over-refusal): a rate         exact
``clopper_pearson_inferred``   a constraint declaring no cost type whose costs      exact if
                               were all 0/1                                         binary
``kl_hoeffding``               costs in a declared range [0, B] (toxicity B = 1,    exact
                               length B = max_new_tokens)
``betting``                    exact per-prompt values in [0, 1] (an opener         exact
                               constraint's opening probability, the ``.opener``
                               rows): variance-adaptive
``student_t``                  costs with no known range; batch constraints (KL)    approx.
=============================  ===================================================  ========
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

BOUNDS: dict[str, str] = {
    "clopper_pearson": "exact one-sided binomial bound (Clopper & Pearson 1934)",
    "clopper_pearson_inferred": "Clopper-Pearson; the constraint declares no cost type and every "
                                "observed cost was 0 or 1: exact if the cost is binary",
    "kl_hoeffding": "finite-sample bound on a mean of costs in [0, B], Chernoff-Hoeffding in "
                    "relative-entropy form (Hoeffding 1963, Thm 1)",
    "betting": "finite-sample, variance-adaptive bound on a mean of values in a known range "
               "[0, B] (exact per-prompt values, or sampled costs such as toxicity scores and "
               "lengths), by betting (Waudby-Smith & Ramdas 2023)",
    "student_t": "APPROXIMATE one-sided Student-t on per-sample (per-pair) values: no "
                 "finite-sample guarantee",
}
EXACT_BOUNDS = {"clopper_pearson", "clopper_pearson_inferred", "kl_hoeffding", "betting"}


def _check_counts(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of a binomial rate k/n, for display.

    Wilson 1927, https://doi.org/10.1080/01621459.1927.10502953. With p = k/n and z the
    (1 + confidence)/2 normal quantile:
        centre = (p + z^2/(2n)) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p(1 - p)/n + z^2/(4n^2))
    Args:
        k: successes (here: samples with cost 1); n: trials. n = 0 gives (0, 1).
        confidence: two-sided level. Default 0.95.
    """
    _check_counts(k, n)
    check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper confidence bound of a binomial rate (Clopper & Pearson 1934).

    https://doi.org/10.1093/biomet/26.4.404. The largest p with P(Bin(n, p) <= k) >= 1 - conf,
    i.e. the ``conf`` quantile of Beta(k + 1, n - k); closed forms: k = n gives 1, k = 0 gives
    1 - (1 - conf)^(1/n). n = 0 gives 1 (nothing observed).

    Args:
        k: samples with cost 1; n: samples.
        confidence: one-sided level. Default 0.95.
    """
    _check_counts(k, n)
    check_confidence(confidence)
    if k == n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


def _bernoulli_kl(p: float, q: float) -> float:
    """kl(p || q) between Bernoulli(p) and Bernoulli(q), with 0 log 0 = 0; q in (0, 1)."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def bounded_mean_upper(mean: float, n: int, confidence: float = 0.95, low: float = 0.0,
                       high: float = 1.0) -> float:
    """Finite-sample one-sided upper confidence bound of E[X] from n independent X_i in [low, high].

    Chernoff-Hoeffding in relative-entropy form (Hoeffding 1963, Theorem 1,
    https://doi.org/10.1080/01621459.1963.10500830): for X_i in [0, 1],
    P(mean(X) <= mu - t) <= exp(-n kl(mu - t || mu)), kl the Bernoulli relative entropy. Inverted,
    with x = (mean - low)/(high - low) and delta = 1 - confidence:
        U = max{q in [x, 1] : n kl(x || q) <= ln(1/delta)},   mapped back to [low, high].
    Valid for any distribution on [low, high] (the Bernoulli is the worst case), the same
    inversion as kl-UCB (Garivier & Cappe 2011, https://arxiv.org/abs/1102.2490). By Pinsker,
    kl >= 2(x - q)^2, it is never looser than Hoeffding's additive x + sqrt(ln(1/delta)/(2n)), and
    much tighter near 0, where constraint values live: x = 0 gives 1 - delta^(1/n) (0.072 for
    n = 40 at 95 %, against 0.194). Preferred to empirical Bernstein (Maurer & Pontil 2009),
    whose 7 ln(2/delta)/(3(n - 1)) term alone is 0.22 at n = 40.

    Args:
        mean: the sample mean, in [low, high].
        n: number of samples; n = 0 gives ``high``.
        confidence: one-sided level. Default 0.95.
        low, high: the a-priori range of every X_i (toxicity [0, 1], length [0, max_new_tokens]).
    """
    check_confidence(confidence)
    if not high > low:
        raise ValueError(f"need high > low, got [{low}, {high}]")
    x = (mean - low) / (high - low)
    if not -1e-9 <= x <= 1 + 1e-9:
        raise ValueError(f"mean {mean} is outside the cost range [{low}, {high}]")
    x = min(max(x, 0.0), 1.0)
    if n <= 0 or x >= 1.0:
        return float(high)
    budget = math.log(1.0 / (1.0 - confidence)) / n
    lo, hi = x, 1.0  # kl(x || q) rises from 0 at q = x to infinity at q = 1: bisect
    for _ in range(100):
        mid = (lo + hi) / 2
        if _bernoulli_kl(x, mid) <= budget:
            lo = mid
        else:
            hi = mid
    return float(low + hi * (high - low))


BET_CAP = 0.9  # largest bet, as a fraction of the wealth at stake (c below)
ORDER_SEED = 20261207  # the fixed shuffle the betting bound reads its values in (see below)


def betting_mean_upper(values, confidence: float = 0.95, cap: float = BET_CAP) -> float:
    """Finite-sample one-sided upper confidence bound of E[X] from independent X_i in [0, 1],
    tight when the X_i vary little: the betting bound of Waudby-Smith & Ramdas 2023
    (JRSS-B, https://arxiv.org/abs/2010.09686, Sec. 4, one-sided, predictable plug-in bets).

    For a candidate mean m, a gambler starting with wealth 1 bets a fraction lambda_t of it that
    X_t falls below m: K_t(m) = prod_{i<=t} (1 + lambda_i (m - X_i)). If E[X] = m, K(m) is a
    non-negative martingale, so by Ville's inequality it ever reaches 1/delta with probability
    <= delta (delta = 1 - confidence). The bound is the smallest m the gambler wins at:
        U = inf{m : max_{t<=n} K_t(m) >= 1/delta},
    found by bisection (K_t(m) rises with m, the bets not depending on m). The bets are
    predictable, from X_1..X_{t-1} only:
        lambda_t = min(sqrt(2 ln(1/delta) / (n sigma2_{t-1})), cap),
        mu_t = (1/2 + sum_{i<=t} X_i) / (t + 1),  sigma2_t = (1/4 + sum_{i<=t} (X_i - mu_i)^2) / (t + 1),
    with cap < 1 keeping every factor positive (1 + lambda (m - X) >= 1 - cap (1 - m) > 0).
    Valid for i.i.d. X_i from any law on [0, 1]. The bets run along the sequence, so its order
    must not depend on the values: a prompt file grouped by category (refused kinds first,
    answered kinds last) lets the gambler win below the mean on the early run. The values are
    therefore taken in a pseudo-random order fixed by n alone (`ORDER_SEED`), which makes any
    listing of an i.i.d. sample exchangeable and the bound repeatable. Its margin falls with the
    spread of the X_i, down to about ln(1/delta) / (cap n) (0.016 at n = 210, 95 %) for values
    that barely vary, where Clopper-Pearson on one 0/1 sample per prompt pays the Bernoulli variance.

    Args:
        values: the n values X_i, each in [0, 1]; n = 0 gives 1.
        confidence: one-sided level. Default 0.95.
        cap: largest bet lambda_t, in (0, 1). Default `BET_CAP` (Waudby-Smith & Ramdas use 1/2
            or 3/4 for two-sided intervals; a one-sided upper bound on a small mean profits from
            larger bets).
    """
    check_confidence(confidence)
    if not 0.0 < cap < 1.0:
        raise ValueError(f"the bet cap must be in (0, 1), got {cap}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size and not (np.isfinite(x).all() and x.min() >= -1e-9 and x.max() <= 1 + 1e-9):
        raise ValueError(f"betting_mean_upper needs values in [0, 1], got "
                         f"[{x.min():g}, {x.max():g}]")
    n = x.size
    if n == 0:
        return 1.0
    x = np.clip(x, 0.0, 1.0)[np.random.default_rng(ORDER_SEED).permutation(n)]
    t = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    sigma2 = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    before = np.concatenate([[0.25], sigma2[:-1]])  # sigma2_{t-1}, sigma2_0 = 1/4
    threshold = math.log(1.0 / (1.0 - confidence))
    bets = np.minimum(np.sqrt(2.0 * threshold / (n * before)), cap)

    def wins(m: float) -> bool:
        return float(np.cumsum(np.log1p(bets * (m - x))).max()) >= threshold

    if not wins(1.0):
        return 1.0
    lo, hi = 0.0, 1.0  # at m = 0 every factor is <= 1, so the gambler never wins there
    for _ in range(60):
        mid = (lo + hi) / 2
        if wins(mid):
            hi = mid
        else:
            lo = mid
    return hi


def student_t_upper(mean: float, std: float, n: int, confidence: float = 0.95) -> float:
    """APPROXIMATE one-sided upper bound mean + t_{conf, n-1} * std / sqrt(n).

    The one-sided Student-t interval: exact for normal samples only, a large-n approximation
    otherwise, with no finite-sample guarantee for skewed, unbounded costs (per-token KL). n < 2
    gives +inf.

    Args:
        mean: the estimate; std: sample standard deviation (ddof 1) of the per-unit values.
        n: independent units (samples, or preference pairs).
        confidence: one-sided level. Default 0.95.
    """
    check_confidence(confidence)
    if n < 2:
        return math.inf
    return float(mean + stats.t.ppf(confidence, n - 1) * std / math.sqrt(n))

