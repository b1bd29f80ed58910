"""Model files: atomic save, exact round trip, and clear refusal of damaged or foreign files."""

import json
import os

import numpy as np
import pytest

from terrain_ssl.core.learner import OnlineRoughnessRegressor
from terrain_ssl.core.model_store import (ModelFileError, load_model_file, quarantine_model_file,
                                          save_model_file)

NAMES = ['a', 'b', 'c']


def trained_model(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.exp(np.sin(X[:, 0]) + 0.3 * X[:, 1] + rng.normal(0, 0.1, n))
    model = OnlineRoughnessRegressor(NAMES, random_state=seed)
    for start in range(0, n, 64):
        model.partial_fit(X[start:start + 64], y[start:start + 64])
    return model, X, y


def test_round_trip_gives_identical_predictions_and_resumes_identically(tmp_path):
    model, X, y = trained_model()
    path = tmp_path / 'model.npz'
    model.save(str(path))
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]
    restored = OnlineRoughnessRegressor.load(str(path))
    assert restored.n_samples_seen_ == model.n_samples_seen_ == 2000
    assert restored.feature_names == tuple(NAMES)
    assert restored.created_unix_s_ == model.created_unix_s_
    for a, b in zip(model.predict(X, return_std=True), restored.predict(X, return_std=True)):
        np.testing.assert_array_equal(a, b)
    # Learning continues exactly as if never saved (same bagging draws, same SGD step counts).
    model.partial_fit(X[:64], y[:64])
    restored.partial_fit(X[:64], y[:64])
    np.testing.assert_array_equal(model.predict(X), restored.predict(X))


def test_file_holds_no_pickle_and_readable_json(tmp_path):
    model, _, _ = trained_model(n=200)
    path = tmp_path / 'model.npz'
    model.save(str(path))
    arrays, meta = load_model_file(str(path))  # allow_pickle=False inside
    assert meta['format'] == 'terrain_ssl.roughness_model'
    assert meta['params']['feature_names'] == NAMES
    json.dumps(meta)
    assert all(array.dtype != object for array in arrays.values())
    with pytest.raises(ValueError, match='Python objects'):
        save_model_file(str(tmp_path / 'x.npz'), {'bad': np.array([{}], dtype=object)}, {})


def test_truncated_file_is_refused_with_a_clear_message(tmp_path):
    model, _, _ = trained_model(n=200)
    path = tmp_path / 'model.npz'
    model.save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFileError, match='truncated or corrupt') as error:
        OnlineRoughnessRegressor.load(str(path))
    assert str(path) in str(error.value)


def test_flipped_bytes_are_caught(tmp_path):
    model, _, _ = trained_model(n=200)
    path = tmp_path / 'model.npz'
    model.save(str(path))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 16] = bytes(16)  # inside the member weights
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        OnlineRoughnessRegressor.load(str(path))


def test_incompatible_files_are_refused(tmp_path):
    model, _, _ = trained_model(n=200)
    arrays, meta = model.get_state()
    foreign = dict(meta, format='someone.else')
    save_model_file(str(tmp_path / 'foreign.npz'), arrays, foreign)
    with pytest.raises(ModelFileError, match='not a roughness model'):
        OnlineRoughnessRegressor.load(str(tmp_path / 'foreign.npz'))
    future = dict(meta, format_version=99)
    save_model_file(str(tmp_path / 'future.npz'), arrays, future)
    with pytest.raises(ModelFileError, match='version 99'):
        OnlineRoughnessRegressor.load(str(tmp_path / 'future.npz'))
    wrong_shape = dict(arrays, member_coef=arrays['member_coef'][:10])
    save_model_file(str(tmp_path / 'shape.npz'), wrong_shape, meta)
    with pytest.raises(ModelFileError, match='shape'):
        OnlineRoughnessRegressor.load(str(tmp_path / 'shape.npz'))
    missing = {k: v for k, v in arrays.items() if k != 'rff_weights'}
    save_model_file(str(tmp_path / 'missing.npz'), missing, meta)
    with pytest.raises(ModelFileError, match='rff_weights'):
        OnlineRoughnessRegressor.load(str(tmp_path / 'missing.npz'))
    (tmp_path / 'text.npz').write_text('hello')
    with pytest.raises(ModelFileError):
        OnlineRoughnessRegressor.load(str(tmp_path / 'text.npz'))
    with pytest.raises(ModelFileError, match='does not exist'):
        OnlineRoughnessRegressor.load(str(tmp_path / 'nothing.npz'))


def test_quarantine_keeps_the_bad_file(tmp_path):
    path = tmp_path / 'model.npz'
    path.write_bytes(b'garbage')
    moved = quarantine_model_file(str(path))
    assert not path.exists() and open(moved, 'rb').read() == b'garbage'
    path.write_bytes(b'garbage again')
    moved_again = quarantine_model_file(str(path))
    assert moved_again != moved and os.path.exists(moved)
