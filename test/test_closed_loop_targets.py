"""The closed-loop target in the suite, sized for CI: the quick route (150 m), 2 laps, seed 0.

terrain_ssl (the three real nodes, cold start, learning live; the vehicle drives at the published
speed limit) against constant v_max, on lap 2 (lap 1 is the cold start). The full multi-lap
table with the oracle and the -80% / 1.25x targets is bench/bench_closed_loop.py.
"""

import numpy as np
import pytest

from terrain_ssl.sim.closed_loop import ClosedLoopConfig, run_closed_loop
from terrain_ssl.sim.closed_loop_cli import QUICK_ROUTE
from terrain_ssl.sim.policy_comparison import SCENARIO_ADVISOR, SCENARIO_LABELER
from terrain_ssl.sim.terrain import TerrainConfig
from terrain_ssl.sim.world import WorldConfig

pytestmark = [pytest.mark.ros, pytest.mark.slow]

LAPS, SEED = 2, 0
# Half the VLP-16's columns: the cells still fill up, the lidar costs half.
WORLD = WorldConfig(terrain=TerrainConfig(route=QUICK_ROUTE), lidar_overrides=(('columns', 900),))


@pytest.fixture(scope='module')
def drives():
    common = dict(laps=LAPS, seed=SEED, world=WORLD, advisor=dict(SCENARIO_ADVISOR),
                  labeler=dict(SCENARIO_LABELER))
    return {policy: run_closed_loop(ClosedLoopConfig(policy=policy, **common))
            for policy in ('terrain_ssl', 'constant')}


def test_terrain_ssl_has_far_fewer_over_limit_events_than_constant_speed(drives):
    learned, constant = drives['terrain_ssl'].summary([1]), drives['constant'].summary([1])
    print(f'\nlap 2: terrain_ssl {learned}\n       constant    {constant}')
    assert len(drives['terrain_ssl'].lap_times_s) == LAPS
    # Measured (seed 0): constant 22 events, terrain_ssl 7 (68% fewer). Target: >= 58% fewer.
    assert constant['over_limit'] >= 15
    assert learned['over_limit'] <= 0.42 * constant['over_limit']
    assert learned['peak_shock_mps2'] < constant['peak_shock_mps2']


def test_terrain_ssl_drives_at_the_nodes_published_speed_limit(drives):
    """Cold start through the three real nodes: cautious first, then the learned limit, which
    the vehicle follows."""
    result = drives['terrain_ssl']
    command = result.steps['command_mps']
    assert command[0] == pytest.approx(SCENARIO_ADVISOR['cautious_speed_mps'])  # no map yet
    assert result.labels and result.labels['x'].size >= 500  # the labeler labelled the drive
    moving = result.steps['t_s'] > 5.0
    assert np.median(np.abs(result.steps['speed_mps'][moving] - command[moving])) < 0.3


def test_terrain_ssl_slows_only_where_it_must(drives):
    """Not a crawl: on lap 2 the learned limit reaches well above the cautious speed on smooth
    ground, and the mean speed stays near what it measures (1.44 m/s; the cautious default is
    1.5 m/s, v_max 6): a policy that only crawls fails here."""
    result = drives['terrain_ssl']
    steps = result.steps
    lap2 = steps['lap'] == 1
    assert steps['command_mps'][lap2].max() >= 0.8 * SCENARIO_ADVISOR['v_max_mps']
    assert steps['command_mps'][lap2].min() <= 1.2 * SCENARIO_ADVISOR['v_min_mps']
    assert result.summary([1])['mean_speed_mps'] >= 1.25
    assert result.info['rejected']['speed_advisor'] == {}
