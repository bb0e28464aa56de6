import math

import numpy as np
import pytest

from models.baselines import (
    BGNBDParams,
    RFMRule,
    bgnbd_log_likelihood,
    bgnbd_p_alive,
    bgnbd_p_none,
    fit_bgnbd,
    simulate_bgnbd,
)

# the parameters Fader, Hardie & Lee estimated on the CDNOW data (time in weeks)
CDNOW = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


@pytest.fixture(scope="module")
def cdnow_like() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    big_t = rng.uniform(27, 39, 5000)  # 39 weeks, staggered first purchases, as in the paper
    x, t_x, later = simulate_bgnbd(CDNOW, big_t, rng, extra=39.0)
    return x, t_x, big_t, later


def test_log_likelihood_of_a_customer_without_repeats_is_the_closed_form() -> None:
    # x = 0: L = (alpha / (alpha + T))^r  (alive for sure: dropout only happens after a repeat)
    ll = bgnbd_log_likelihood(CDNOW, [0.0], [0.0], [30.0])
    assert ll[0] == pytest.approx(CDNOW.r * math.log(CDNOW.alpha / (CDNOW.alpha + 30.0)))


def test_fit_recovers_the_parameters_of_data_simulated_from_the_model(cdnow_like) -> None:
    x, t_x, big_t, _ = cdnow_like
    est = fit_bgnbd(x, t_x, big_t)
    for name, true in CDNOW.as_dict().items():
        assert getattr(est, name) == pytest.approx(true, rel=0.3), name
    # the estimate is a maximum: at least as likely as the truth and as a perturbed guess
    ll_est = bgnbd_log_likelihood(est, x, t_x, big_t).sum()
    assert ll_est >= bgnbd_log_likelihood(CDNOW, x, t_x, big_t).sum() - 1e-6
    worse = BGNBDParams(est.r * 1.3, est.alpha, est.a, est.b * 0.7)
    assert ll_est > bgnbd_log_likelihood(worse, x, t_x, big_t).sum()


def test_predicted_share_without_purchases_matches_simulated_futures(cdnow_like) -> None:
    x, t_x, big_t, later = cdnow_like
    p_none = bgnbd_p_none(CDNOW, 39.0, x, t_x, big_t)
    assert float(p_none.mean()) == pytest.approx(float((later == 0).mean()), abs=0.02)
    buyers = x >= 3
    assert float(p_none[buyers].mean()) == pytest.approx(float((later[buyers] == 0).mean()), abs=0.04)


def test_p_alive_and_p_none_behave() -> None:
    x = np.array([0.0, 2.0, 2.0, 5.0])
    t_x = np.array([0.0, 30.0, 5.0, 29.0])
    big_t = np.full(4, 30.0)
    alive = bgnbd_p_alive(CDNOW, x, t_x, big_t)
    assert alive[0] == 1.0  # no repeat yet: cannot have dropped out
    assert alive[1] > alive[2]  # same count, a recent last purchase is more reassuring
    none_0 = bgnbd_p_none(CDNOW, 0.0, x, t_x, big_t)
    np.testing.assert_allclose(none_0, 1.0)
    p10, p50 = bgnbd_p_none(CDNOW, 10.0, x, t_x, big_t), bgnbd_p_none(CDNOW, 50.0, x, t_x, big_t)
    assert ((p50 <= p10) & (p10 <= 1.0) & (p50 >= 1 - alive - 1e-12)).all()
    with pytest.raises(ValueError, match="t_x <= T"):
        bgnbd_p_alive(CDNOW, [1.0], [40.0], [30.0])


def test_rfm_rule_predicts_the_smoothed_rate_of_each_cell() -> None:
    rng = np.random.default_rng(1)
    r = rng.integers(0, 100, 5000).astype(float)
    f = rng.integers(0, 10, 5000).astype(float)
    m = rng.gamma(1.0, 100.0, 5000)
    y = (rng.random(5000) < r / 100).astype(float)  # churn grows with recency only
    rule = RFMRule.fit(r, f, m, y[:, None], prior_strength=0.0)
    p = rule.predict(r, f, m)[:, 0]
    assert p.shape == (5000,)
    # with no smoothing, each user's prediction is the observed rate of their cell
    cells = rule.scores(r, f, m)
    key = cells @ np.array([100, 10, 1])
    for k in np.unique(key)[:20]:
        assert p[key == k][0] == pytest.approx(y[key == k].mean())
    low_r, high_r = p[cells[:, 0] == 1].mean(), p[cells[:, 0] == 5].mean()
    assert high_r > low_r + 0.5
    smoothed = RFMRule.fit(r, f, m, y, prior_strength=1e9).predict(r, f, m)[:, 0]
    np.testing.assert_allclose(smoothed, y.mean(), atol=1e-4)
