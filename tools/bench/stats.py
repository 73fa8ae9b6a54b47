"""Inference on paired differences (HQOD − baseline, seed by seed): the mean with a 95% Student t interval, a paired
bootstrap 95% interval and an exact two-sided sign test. Plain Python and numpy: the t quantile comes from the
regularized incomplete beta function (continued fraction) inverted by bisection."""
import math

import numpy as np

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0  # fixed, so a report is reproducible from its per-seed differences


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method (converges for x < (a+1)/(a+b+2))."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``), 0.5 < p < 1."""
    if not 0.5 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def t_interval(values) -> list:
    """The 95% Student t interval of the mean of ``values`` ([low, high]); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * sem
    return [mean - half, mean + half]


def bootstrap_interval(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list:
    """The paired bootstrap 95% percentile interval of the mean: ``resamples`` means of ``values`` drawn with
    replacement (each value one seed's difference, so pairs stay together); None for no values."""
    if not len(values):
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    return [float(v) for v in np.percentile(means, [tail, 100 - tail])]


def sign_test(values) -> dict:
    """Exact two-sided sign test of "positive and negative differences are equally likely": ties (0) are dropped,
    p = P(a count at least as far from n/2 as the observed one) under Binomial(n, 1/2), capped at 1."""
    positive = sum(1 for v in values if v > 0)
    negative = sum(1 for v in values if v < 0)
    n = positive + negative
    fewer = min(positive, negative)
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(fewer + 1)) / 2 ** n) if n else 1.0
    return {"positive": positive, "negative": negative, "ties": len(values) - n, "p": p}


def inference(values) -> dict:
    """n, mean, 95% t interval, paired bootstrap 95% interval and sign test of paired differences ``values``."""
    return {"n": len(values), "mean": sum(values) / len(values) if values else None, "t_ci95": t_interval(values),
            "bootstrap_ci95": bootstrap_interval(values), "sign_test": sign_test(values)}
