"""The fleet commands' parts that need no cluster: objectives, search space, parameters file,
names and the progress bar. (test_fleet_cluster.py runs them on a real Ray cluster.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

pytest.importorskip('optuna', reason='the fleet extra (requirements-fleet.txt) is not installed')

from terrain_ssl.fleet.objectives import ObjectiveError, consistency_score  # noqa: E402


def _laps(cell_roughness, laps, noise, rng, labels_per_crossing=1):
    """Labels of a drive crossing each cell `laps` times, 60 s apart, `noise` added per label."""
    xs, ys, values, times = [], [], [], []
    for lap in range(laps):
        for i, true in enumerate(cell_roughness):
            for k in range(labels_per_crossing):
                xs.append(0.5 * i + 0.25)
                ys.append(0.25)
                values.append(true + noise * rng.standard_normal())
                times.append(60.0 * lap + 0.1 * i + 0.01 * k)
    return np.array(xs), np.array(ys), np.array(values), np.array(times)


def test_consistency_is_zero_when_every_crossing_agrees_and_grows_with_disagreement():
    rng = np.random.default_rng(0)
    cells = rng.uniform(0.1, 1.0, 40)
    assert consistency_score(*_laps(cells, 3, 0.0, rng)) == pytest.approx(0.0, abs=1e-12)
    small = consistency_score(*_laps(cells, 3, 0.02, rng))
    large = consistency_score(*_laps(cells, 3, 0.2, rng))
    assert 0.0 < small < large
    # Dimensionless: every label scaled alike (another speed exponent's units) scores the same.
    x, y, values, t = _laps(cells, 3, 0.1, np.random.default_rng(1))
    assert consistency_score(x, y, 7.0 * values, t) == pytest.approx(
        consistency_score(x, y, values, t), rel=1e-9)


def test_consistency_needs_cells_crossed_more_than_once():
    rng = np.random.default_rng(2)
    # One lap, several labels per crossing: one crossing per cell, nothing to compare.
    with pytest.raises(ObjectiveError, match='crossed more than once'):
        consistency_score(*_laps(rng.uniform(0.1, 1, 40), 1, 0.1, rng, labels_per_crossing=3))
    with pytest.raises(ObjectiveError, match='no labels'):
        consistency_score([], [], [], [])


def test_consistency_compares_crossings_not_the_labels_of_one_crossing():
    """Labels of one crossing are averaged first: their spread is not within-cell spread."""
    rng = np.random.default_rng(3)
    cells = rng.uniform(0.1, 1.0, 30)
    x, y, values, t = _laps(cells, 2, 0.0, rng, labels_per_crossing=2)
    values = values + np.tile([0.3, -0.3], values.size // 2)  # +-0.3 within each crossing
    assert consistency_score(x, y, values, t) == pytest.approx(0.0, abs=1e-12)


def test_search_space_stays_inside_the_declared_ranges_and_holds_the_defaults():
    from optuna.distributions import CategoricalDistribution

    from terrain_ssl.fleet.space import TUNED_PARAMETERS, parameter_specs, search_space

    specs = parameter_specs()
    for objective in TUNED_PARAMETERS:
        for name, dist in search_space(objective).items():
            spec = specs[name]
            if isinstance(dist, CategoricalDistribution):
                assert set(dist.choices) == set(spec.choices) and spec.default in dist.choices
                continue
            assert dist.low <= spec.default <= dist.high, name
            assert spec.min is None or dist.low >= spec.min, name
            assert spec.max is None or dist.high <= spec.max, name
            assert dist.low < dist.high and math.isfinite(dist.high), name


def test_parameters_file_is_taken_by_the_nodes(tmp_path):
    """best_params.yaml: the package config with the tuned values in their nodes' sections,
    read by rcl and the real nodes."""
    import rclpy
    from rclpy.context import Context

    from terrain_ssl.fleet.space import parse_overrides, write_parameters_file
    from terrain_ssl.ros.bringup import default_config_path
    from terrain_ssl.ros.pipeline import create_nodes

    values = parse_overrides(['label.speed_exponent:=0.5']) | {
        'learning_rate': 0.011, 'n_components': 64, 'vibration.shock_measure': 'peak'}
    path = tmp_path / 'best_params.yaml'
    write_parameters_file(default_config_path(), values, path)
    assert yaml.safe_load(path.read_text())['/**/roughness_learner']['ros__parameters'][
        'n_components'] == 64
    context = Context()
    rclpy.init(args=['--ros-args', '--params-file', str(path)], context=context)
    nodes = create_nodes(context=context)
    try:
        found = {name: node.get_parameter(name).value for node in nodes
                 for name in values if node.has_parameter(name)}
    finally:
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()
    assert found == values
    with pytest.raises(ValueError, match='no node section'):
        write_parameters_file(default_config_path(), {'no.such': 1}, tmp_path / 'x.yaml')


def test_bag_names_are_unique_folder_names(tmp_path):
    from terrain_ssl.fleet.evaluate import bag_names

    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'run.mcap').touch()
    assert bag_names([tmp_path / 'a', tmp_path / 'b' / 'run.mcap', tmp_path / 'b' / 'run.db3',
                      tmp_path / 'c' / 'a']) == ['a', 'run', 'run-2', 'a-2']


def test_progress_bar_counts_bags_and_bag_seconds(capsys):
    from terrain_ssl.fleet.cluster import ProgressBar

    bar = ProgressBar(4, 240.0)
    bar.update(60.0, failed=False)
    bar.update(55.5, failed=True)
    bar.close()
    line = capsys.readouterr().err.strip().split('\r')[-1]
    assert '2/4 bags' in line and '116/240 bag-s' in line and '1 failed' in line
