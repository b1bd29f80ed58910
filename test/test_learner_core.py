"""The online roughness regressor, prequential metrics, baseline and grid on synthetic data."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from terrain_ssl.core.grid import roughness_grid
from terrain_ssl.core.learner import OnlineRoughnessRegressor, OnlineStandardizer
from terrain_ssl.core.metrics import BinnedIsotonicBaseline, PrequentialScore, spearman

NAMES = ['height_spread', 'slope', 'step', 'curvature']


def synthetic(n, seed):
    """A known nonlinear roughness: rises with height spread (saturating), bumps with slope^2."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.lognormal(-3.0, 0.6, n), rng.normal(0, 1, n),
                         rng.normal(0, 0.1, n), rng.normal(5, 2, n)])
    log_truth = 1.5 * np.tanh(8 * X[:, 0] - 0.4) + 0.4 * X[:, 1] ** 2 - 0.5
    y = np.exp(log_truth + rng.normal(0, 0.2, n))
    return X, y, np.exp(log_truth)


def learn_prequentially(model, X, y, batch=64, baseline=None):
    score, base_score, errors = PrequentialScore(window=2000), PrequentialScore(2000), []
    for start in range(0, len(X), batch):
        xb, yb = X[start:start + batch], y[start:start + batch]
        if model.is_fitted:
            predicted = model.predict(xb)
            score.update(predicted, yb)
            errors.append(np.abs(predicted - yb))
            if baseline is not None:
                base_score.update(baseline.predict(xb[:, 0]), yb)
        model.partial_fit(xb, yb)
        if baseline is not None:
            baseline.partial_fit(xb[:, 0], yb)
    return score, base_score, np.concatenate(errors)


def test_learns_known_nonlinear_function_and_beats_geometric_baseline():
    X, y, truth = synthetic(8000, seed=1)
    model = OnlineRoughnessRegressor(NAMES, random_state=3)
    score, base_score, errors = learn_prequentially(model, X, y, baseline=BinnedIsotonicBaseline())
    quarter = len(errors) // 4
    first_quarter, second_half = errors[:quarter].mean(), errors[2 * quarter:].mean()
    assert second_half < 0.8 * first_quarter, (first_quarter, second_half)
    assert score.window_spearman > 0.8
    # The baseline sees height spread only; the slope term is invisible to it.
    assert score.window_mae < base_score.window_mae
    # Held-out data from another seed: ranks by the noise-free truth.
    X_test, _, truth_test = synthetic(2000, seed=2)
    assert spearman(model.predict(X_test), truth_test) > 0.85
    assert model.n_samples_seen_ == 8000


def test_uncertainty_grows_away_from_the_data():
    X, y, _ = synthetic(3000, seed=4)
    model = OnlineRoughnessRegressor(NAMES).partial_fit(X, y)
    near = X[:200]
    far = near.copy()
    far[:, 1] += 8.0  # 8 standard deviations of slope beyond anything seen
    far[:, 3] -= 20.0
    _, sigma_near = model.predict(near, return_std=True)
    roughness_far, sigma_far = model.predict(far, return_std=True)
    assert np.all(sigma_near > 0)
    # Relative to the predicted value, so the comparison holds whatever the mean does out there.
    assert np.median(sigma_far / roughness_far) > 3 * np.median(
        sigma_near / model.predict(near))



def test_novelty_counts_only_the_rough_side_of_roughness_features():
    """Ground smoother than any labeled cell is common and not a hazard; rougher ground is."""
    rng = np.random.default_rng(5)
    names = ['height_std', 'max_step', 'range']  # two 'larger = rougher' features, one sighting
    X = np.column_stack([rng.lognormal(-3.0, 0.4, 3000), rng.lognormal(-3.0, 0.4, 3000),
                         rng.uniform(5.0, 15.0, 3000)])
    y = 20.0 * X[:, 0] * rng.lognormal(0.0, 0.2, 3000)
    model = OnlineRoughnessRegressor(names).partial_fit(X, y)
    typical = np.array([[0.05, 0.05, 10.0]])
    smoother = np.array([[1e-4, 1e-4, 10.0]])   # far below the seen range, in log units
    rougher = np.array([[2.0, 2.0, 10.0]])      # far above it
    far_range = np.array([[0.05, 0.05, 60.0]])  # a sighting feature out of range
    relative = {}
    for name, row in [('typical', typical), ('smoother', smoother), ('rougher', rougher),
                      ('far_range', far_range)]:
        roughness, sigma = model.predict(row, return_std=True)
        relative[name] = float(sigma[0] / roughness[0])
    assert model.features_.novelty(model._model_inputs(smoother),
                                   model._novelty_above_only)[0] == 0.0
    assert relative['smoother'] < 3 * relative['typical']
    assert relative['rougher'] > 10 * relative['typical']
    assert relative['far_range'] > 10 * relative['typical']
    # The standardizer itself still measures both sides when asked to.
    assert model.features_.novelty(model._model_inputs(smoother))[0] > 5.0


def test_linear_model_kind_and_single_member_work():
    X, y, _ = synthetic(1000, seed=5)
    model = OnlineRoughnessRegressor(NAMES, model='linear_sgd', n_members=1).partial_fit(X, y)
    roughness, sigma = model.predict(X[:10], return_std=True)
    assert roughness.shape == sigma.shape == (10,)
    assert np.all(np.isfinite(sigma)) and np.all(roughness >= 0)


def test_bad_input_is_refused_with_a_reason():
    model = OnlineRoughnessRegressor(NAMES)
    X, y, _ = synthetic(10, seed=6)
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(ValueError, match='shape'):
        model.partial_fit(X[:, :3], y)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        model.partial_fit(bad, y)
    with pytest.raises(ValueError, match='negative'):
        model.partial_fit(X, -y)
    with pytest.raises(ValueError, match='model must be one of'):
        OnlineRoughnessRegressor(NAMES, model='forest')
    assert model.n_samples_seen_ == 0  # nothing half-learned


def test_standardizer_matches_batch_statistics():
    rng = np.random.default_rng(7)
    data = rng.normal(3.0, 2.0, size=(1000, 3))
    standardizer = OnlineStandardizer(3)
    for chunk in np.array_split(data, 17):
        standardizer.update(chunk)
    np.testing.assert_allclose(standardizer.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(standardizer.std, data.std(axis=0), rtol=1e-12)
    assert np.all(standardizer.novelty(data) == 0)


def test_spearman_and_prequential_score():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    score = PrequentialScore(window=3)
    score.update([1.0, 2.0], [2.0, 2.0])
    score.update([5.0, 5.0], [1.0, 5.0])
    assert score.count == 4 and score.mae == pytest.approx(5.0 / 4)
    assert score.window_mae == pytest.approx(4.0 / 3)  # last three pairs only


def test_baseline_is_monotone_in_height_spread():
    rng = np.random.default_rng(8)
    spread = rng.lognormal(-3, 1, 5000)
    baseline = BinnedIsotonicBaseline().partial_fit(spread, 10 * spread * rng.lognormal(0, .5,
                                                                                        5000))
    grid = np.geomspace(1e-3, 1, 50)
    predicted = baseline.predict(grid)
    assert np.all(np.diff(predicted) >= 0) and predicted[-1] > 10 * predicted[0]


def test_grid_scales_clips_and_marks_unknown():
    xy = np.array([[0.1, 0.1], [0.2, 0.2], [1.1, 0.1], [50.0, 50.0]])
    grid = roughness_grid(xy, [0.5, 2.0, 0.25, 1.0], resolution_m=0.5, size_m=4.0,
                          full_scale=1.0)
    assert grid.cells.shape == (8, 8) and grid.cells.dtype == np.int8
    column = int((0.1 - grid.origin_x_m) // 0.5)
    row = int((0.1 - grid.origin_y_m) // 0.5)
    assert grid.cells[row, column] == 100  # roughest of the two patches, clipped to 100
    assert grid.cells[row, column + 2] == 25
    assert (grid.cells == -1).sum() == 64 - 2  # everything else unknown; far patch left out


def test_scale_features_are_learned_in_log_space_and_the_choice_persists(tmp_path):
    names = ['height_std', 'slope', 'neighbourhood_height_std']
    assert OnlineRoughnessRegressor(names).log_features == ('height_std',
                                                            'neighbourhood_height_std')
    with pytest.raises(ValueError, match='not in feature_names'):
        OnlineRoughnessRegressor(names, log_features=['range'])
    # A power law over two decades of height spread: linear in log-log, so the log model ranks
    # a held-out set far better at the small end than the same model on raw values.
    rng = np.random.default_rng(11)
    X = np.column_stack([np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), 4000)),
                         rng.normal(0, 0.05, 4000), rng.uniform(0, 1, 4000)])
    y = 20.0 * X[:, 0] ** 1.5 * np.exp(rng.normal(0, 0.1, 4000))
    logged = OnlineRoughnessRegressor(names, random_state=1)
    raw = OnlineRoughnessRegressor(names, log_features=[], random_state=1)
    for start in range(0, 3000, 64):
        logged.partial_fit(X[start:start + 64], y[start:start + 64])
        raw.partial_fit(X[start:start + 64], y[start:start + 64])
    small = X[3000:, 0] < 1e-2
    assert spearman(logged.predict(X[3000:][small]), y[3000:][small]) > \
        spearman(raw.predict(X[3000:][small]), y[3000:][small]) + 0.1
    logged.save(str(tmp_path / 'model.npz'))
    loaded = OnlineRoughnessRegressor.load(str(tmp_path / 'model.npz'))
    assert loaded.log_features == logged.log_features
    assert np.array_equal(loaded.predict(X[3000:]), logged.predict(X[3000:]))


def test_a_diverging_learner_still_predicts_finite_roughness():
    # A step far too large for raw features makes linear SGD blow up; the predictions must stay
    # finite and within a few target spreads of the labels seen (exp() must not overflow).
    X, y, _ = synthetic(2000, seed=12)
    X = X * 50.0
    model = OnlineRoughnessRegressor(NAMES, model='linear_sgd', learning_rate=1.0, log_features=[])
    for start in range(0, 2000, 64):
        model.partial_fit(X[start:start + 64], y[start:start + 64])
    roughness, sigma = model.predict(X[:200], return_std=True)
    assert np.isfinite(roughness).all() and np.isfinite(sigma).all()
    assert roughness.max() < y.max() * np.exp(3.0 * np.log(y + 1e-3).std()) + 1.0


def test_uncertainty_follows_the_label_noise_of_each_kind_of_ground():
    # Same mean everywhere, but labels are 6x noisier (log units) where `slope` > 0: the
    # uncertainty there must be larger, and about one sigma wide on both kinds of ground.
    rng = np.random.default_rng(13)
    n = 8000
    X = np.column_stack([np.full(n, 0.05), rng.normal(0, 1, n), rng.normal(0, 0.1, n),
                         rng.normal(5, 2, n)])
    noise = np.where(X[:, 1] > 0, 0.6, 0.1)
    y = 0.3 * np.exp(rng.normal(0, 1, n) * noise)
    model = OnlineRoughnessRegressor(NAMES, random_state=2)
    for start in range(0, 6000, 64):
        model.partial_fit(X[start:start + 64], y[start:start + 64])
    roughness, sigma = model.predict(X[6000:], return_std=True)
    noisy = X[6000:, 1] > 0
    ratio = sigma / roughness
    assert np.median(ratio[noisy]) > 2.5 * np.median(ratio[~noisy])
    # Coverage of the one-sigma upper bound, per kind of ground (~84% for Gaussian noise).
    for part in (noisy, ~noisy):
        covered = np.mean(y[6000:][part] <= roughness[part] + sigma[part])
        assert 0.7 < covered < 0.97


def test_linear_sgd_learns_what_sklearns_sgd_regressor_learns():
    """The members' own SGD pass (LinearSGD, compiled) against scikit-learn's SGDRegressor
    with the same settings, through its public partial_fit: batches of several sizes, Poisson
    weights (zeros included), a penalty strong enough to matter (alpha eta = 2e-4 per sample).
    Both keep float32 weights; scikit-learn rounds them to float32 at every step and LinearSGD
    once per batch, so they agree to float32 round-off accumulated over ~100 steps: rtol 1e-4."""
    from sklearn.linear_model import SGDRegressor

    from terrain_ssl.core.linear_sgd import LinearSGD

    rng = np.random.default_rng(3)
    library = SGDRegressor(loss='squared_error', penalty='l2', alpha=1e-2,
                           learning_rate='constant', eta0=0.02, shuffle=False, random_state=7)
    own = LinearSGD(16, learning_rate=0.02, alpha=1e-2)
    for n in (1, 32, 5, 64):
        phi = rng.normal(size=(n, 16)).astype(np.float32)
        target = (phi @ rng.normal(size=16) + 0.5).astype(np.float32)
        weights = rng.poisson(1.0, size=n).astype(np.float32)
        weights[0] = 1.0
        library.partial_fit(phi, target, sample_weight=weights)
        own.partial_fit(phi, target, sample_weight=weights)
        np.testing.assert_allclose(own.coef_, library.coef_, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(own.intercept_, library.intercept_, rtol=1e-4, atol=1e-6)
        assert own.t_ == library.t_
    assert np.abs(own.coef_).max() > 0.1  # it learned something


def test_linear_sgd_refuses_overflow_and_bad_shapes():
    from terrain_ssl.core.linear_sgd import LinearSGD

    model = LinearSGD(3, learning_rate=10.0, alpha=0.0)
    huge = np.full((50, 3), 1e30, dtype=np.float32)
    with pytest.raises(ValueError, match='overflowed'):
        model.partial_fit(huge, np.ones(50))
    assert not model.has_learned and np.all(model.coef_ == 0.0)  # unchanged
    with pytest.raises(ValueError, match='shape'):
        model.partial_fit(np.ones((4, 2)), np.ones(4))


def test_ensemble_mean_and_spread_are_numpys():
    """_predict_target computes the members' mean and std (ddof=1) from one shared sum: as
    np.mean and np.std compute them, up to float64 round-off."""
    X, y, _ = synthetic(400, 5)
    model = OnlineRoughnessRegressor(NAMES, random_state=2)
    model.partial_fit(X[:200], y[:200])
    inputs = model._model_inputs(model._check_features(X[200:]))
    mean, spread, phi = model._predict_target(inputs)
    coef, intercept = model._stacked_members()
    member_z = phi @ coef + intercept
    target_std = model.targets_.std[0]
    margin = 3.0 * target_std
    expected_mean = np.clip(model.targets_.mean[0]
                            + target_std * member_z.mean(axis=1, dtype=np.float64),
                            model.targets_.min[0] - margin, model.targets_.max[0] + margin)
    expected_spread = target_std * member_z.std(axis=1, ddof=1, dtype=np.float64)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(spread, expected_spread, rtol=1e-12)


def test_baseline_curve_is_sklearns_isotonic_regression_to_the_bit():
    from sklearn.isotonic import IsotonicRegression

    from terrain_ssl.core.metrics import isotonic_curve

    rng = np.random.default_rng(11)
    for n_knots in (1, 2, 3, 10, 60):
        x = np.sort(rng.choice(np.linspace(-9.0, 1.0, 200), n_knots, replace=False))
        y = np.cumsum(rng.normal(0.1, 1.0, n_knots))
        y[rng.random(n_knots) < 0.3] = 0.5  # ties and plateaus
        weight = rng.integers(1, 50, n_knots).astype(np.float64)
        new_x = rng.uniform(-11.0, 3.0, 100)
        expected = IsotonicRegression(increasing=True, out_of_bounds='clip').fit(
            x, y, sample_weight=weight).predict(new_x)
        knots_x, knots_y = isotonic_curve(x, y, weight)
        got = np.interp(np.clip(new_x, knots_x[0], knots_x[-1]), knots_x, knots_y)
        assert np.array_equal(got, expected)
