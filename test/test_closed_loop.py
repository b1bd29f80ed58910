"""Closed loop on a short route: policies drive the simulated vehicle; the real nodes close it.

The multi-lap table with the targets is bench/bench_closed_loop.py; these runs are short.
"""

import numpy as np
import pytest

from terrain_ssl.sim.closed_loop import (ClosedLoopConfig, calibration_drive, fit_calibration,
                                         format_table, run_closed_loop)
from terrain_ssl.sim.route import RoundedRectangleRoute
from terrain_ssl.sim.terrain import TerrainConfig
from terrain_ssl.sim.world import WorldConfig

# 150 m loop with the default A..F segments scaled onto it.
WORLD = WorldConfig(terrain=TerrainConfig(
    route=RoundedRectangleRoute(long_m=40.0, short_m=10.0, corner_radius_m=8.0)))
ADVISOR = {'shock_limit_mps2': 2.0, 'v_max_mps': 6.0, 'v_min_mps': 1.0,
           'cautious_speed_mps': 1.5, 'front_offset_m': 2.6, 'uncertainty_weight': 0.5}


@pytest.fixture(scope='module')
def calibration():
    return calibration_drive(WORLD, seed=1, speed_mps=4.0)


def test_calibration_drive_gives_a_positive_gain(calibration):
    assert calibration.gain > 0 and calibration.samples >= 50
    with pytest.raises(ValueError):
        fit_calibration([1.0, 2.0], [0.01, 0.02])


def test_oracle_slows_for_rough_ground_and_has_fewer_over_limit_shocks(calibration):
    common = dict(laps=1, seed=1, world=WORLD, advisor=ADVISOR)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common))
    oracle = run_closed_loop(ClosedLoopConfig(policy='oracle', calibration=calibration, **common))
    fast, careful = constant.summary([0]), oracle.summary([0])
    assert fast['over_limit'] >= 5
    assert careful['over_limit'] <= 0.5 * fast['over_limit']
    assert careful['mean_speed_mps'] < fast['mean_speed_mps']
    assert len(oracle.lap_times_s) == 1 and oracle.lap_times_s[0] > constant.lap_times_s[0]
    # The oracle's command follows the terrain: slow somewhere, fast somewhere.
    command = oracle.steps['command_mps']
    assert command.min() <= 1.5 and command.max() >= 5.0
    table = format_table([constant, oracle])
    assert 'constant' in table and 'oracle' in table


def test_terrain_ssl_drives_at_the_nodes_published_speed_limit():
    """Cold start through the three real nodes: cautious first, then the learned limit."""
    result = run_closed_loop(ClosedLoopConfig(
        policy='terrain_ssl', laps=1, seed=1, world=WORLD, advisor=ADVISOR,
        labeler={'footprint.length': 3.0, 'footprint.offset_x': 1.3, 'footprint.width': 1.8},
        learner={'warmup_samples': 50}, max_sim_s=25.0))
    command = result.steps['command_mps']
    assert command[0] == pytest.approx(ADVISOR['cautious_speed_mps'])  # no map yet
    assert result.labels and result.labels['x'].size >= 50  # the labeler labelled the drive
    # Once the learner publishes, the advisor's limit departs from the cautious default.
    assert np.any(np.abs(command - ADVISOR['cautious_speed_mps']) > 0.2)
    # The vehicle follows the command (within its own acceleration limits).
    moving = result.steps['t_s'] > 5.0
    assert np.median(np.abs(result.steps['speed_mps'][moving] - command[moving])) < 0.3
    assert result.info['rejected']['speed_advisor'] == {}
