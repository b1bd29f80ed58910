"""Learner speed: learn rate (samples/s, batches of 64) and predict time for 10,000 patches.

Targets: >= 20,000 samples/s learned; <= 5 ms to predict 10,000 patches (with uncertainty).
A plain SGDRegressor (one member, no feature map, no uncertainty) runs in the same process as the
yardstick, so the ratios stay meaningful on a busy machine.

    PYTHONPATH=. .venv/bin/python bench/bench_learner.py
"""

import time

import numpy as np
from sklearn.linear_model import SGDRegressor

from terrain_ssl.core.learner import OnlineRoughnessRegressor

N_FEATURES = 10
BATCH = 64
N_LEARN = 20_000
N_PREDICT = 10_000
REPEATS = 5


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    y = np.exp(np.tanh(X[:, 0]) + 0.3 * X[:, 1] ** 2 + rng.normal(0, 0.2, n))
    return X, y


def best_time(function, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    X, y = data(N_LEARN)
    X_new, _ = data(N_PREDICT, seed=1)
    names = [f'f{i}' for i in range(N_FEATURES)]

    def learn_ours(model_kind):
        def run():
            model = OnlineRoughnessRegressor(names, model=model_kind)
            for start in range(0, N_LEARN, BATCH):
                model.partial_fit(X[start:start + BATCH], y[start:start + BATCH])
            return model
        return run

    def learn_plain():
        model = SGDRegressor(learning_rate='constant', eta0=0.01, shuffle=False)
        for start in range(0, N_LEARN, BATCH):
            model.partial_fit(X[start:start + BATCH], np.log(y[start:start + BATCH]))
        return model

    plain = learn_plain()
    plain_learn = best_time(learn_plain, 3)
    plain_predict = best_time(lambda: plain.predict(X_new), 20)
    print(f'{"model":<28} {"learn samples/s":>16} {"x plain":>8} {"predict 10k ms":>15} '
          f'{"x plain":>8}')
    print(f'{"plain SGDRegressor":<28} {N_LEARN / plain_learn:16,.0f} {1.0:8.2f} '
          f'{plain_predict * 1e3:15.2f} {1.0:8.2f}')
    results = []
    for kind in ('rff_sgd', 'linear_sgd'):
        model = learn_ours(kind)()
        learn = best_time(learn_ours(kind), 3)
        predict = best_time(lambda: model.predict(X_new, return_std=True), 20)
        print(f'{kind + " x5 (+uncertainty)":<28} {N_LEARN / learn:16,.0f} '
              f'{plain_learn / learn:8.2f} {predict * 1e3:15.2f} {predict / plain_predict:8.2f}')
        results.append(f'RESULT learner_learn_{kind} {N_LEARN / learn:.0f} samples/s')
        results.append(f'RESULT learner_predict10k_{kind} {predict * 1e3:.2f} ms')
    print('\n'.join(results))
    print(f'targets: learn >= 20,000 samples/s, predict 10,000 patches <= 5 ms '
          f'({N_FEATURES} features, batches of {BATCH}, best of repeats)')


if __name__ == '__main__':
    main()
