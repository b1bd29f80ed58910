"""Closed loop on a short route: policies drive the simulated vehicle; the real nodes close it.

The multi-lap table with the targets is bench/bench_closed_loop.py; these runs are short.
terrain_ssl through the three real nodes, with its target against constant speed, is
test_closed_loop_targets.py.
"""

import numpy as np
import pytest

from terrain_ssl.sim.closed_loop import ClosedLoopConfig, format_table, run_closed_loop
from terrain_ssl.sim.oracle import (Footprint, footprint_crossings, labeler_footprint,
                                    oracle_calibration_drive)
from terrain_ssl.sim.route import RoundedRectangleRoute
from terrain_ssl.sim.terrain import TerrainConfig
from terrain_ssl.sim.world import WorldConfig

# 150 m loop with the default A..F segments scaled onto it.
WORLD = WorldConfig(terrain=TerrainConfig(
    route=RoundedRectangleRoute(long_m=40.0, short_m=10.0, corner_radius_m=8.0)))
ADVISOR = {'shock_limit_mps2': 2.0, 'v_max_mps': 6.0, 'v_min_mps': 1.0,
           'cautious_speed_mps': 1.5, 'front_offset_m': 2.6, 'uncertainty_weight': 0.5}


FOOTPRINT = Footprint(length_m=3.0, width_m=1.8, offset_x_m=1.3)


@pytest.fixture(scope='module')
def measured_map():
    return oracle_calibration_drive(WORLD, seed=1, speeds_mps=(2.0, 4.0), footprint=FOOTPRINT)


def test_oracle_slows_for_rough_ground_and_laps_slower_than_constant_speed(measured_map):
    common = dict(laps=1, seed=1, world=WORLD, advisor=ADVISOR)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common))
    oracle = run_closed_loop(ClosedLoopConfig(policy='oracle', oracle_map=measured_map,
                                              **common))
    fast, careful = constant.summary([0]), oracle.summary([0])
    assert fast['over_limit'] >= 5
    assert careful['mean_speed_mps'] < fast['mean_speed_mps']
    assert len(oracle.lap_times_s) == 1 and oracle.lap_times_s[0] > constant.lap_times_s[0]
    table = format_table([constant, oracle])
    assert 'constant' in table and 'oracle' in table


def test_unknown_parameter_names_are_refused():
    """A misspelt parameter would otherwise be dropped and the run use the default."""
    with pytest.raises(ValueError, match='speed_advisor has no parameter shock_limit'):
        run_closed_loop(ClosedLoopConfig(policy='constant', world=WORLD,
                                         advisor={'shock_limit': 2.0}))
    with pytest.raises(ValueError, match='roughness_labeler has no parameter footprint.len'):
        run_closed_loop(ClosedLoopConfig(policy='terrain_ssl', world=WORLD,
                                         labeler={'footprint.len': 3.0}))


def test_the_oracle_footprint_is_the_labelers():
    from terrain_ssl.core.labeler import LabelerConfig

    default = LabelerConfig()
    assert labeler_footprint({}) == Footprint(default.footprint_length, default.footprint_width,
                                              default.footprint_offset_x)
    assert labeler_footprint({'footprint.length': 3.0}).length_m == 3.0


def test_footprint_crossings_follow_the_labelers_rectangle():
    # Straight drive along +x at 2 m/s, sampled at 50 Hz: the 3.0 x 1.8 m footprint centred
    # 1.3 m ahead covers a cell (centre on the path) from when its front edge reaches the cell
    # centre until its rear edge leaves it: 3.0 m of travel = 1.5 s.
    t_ns = np.arange(0, 10_000_000_000, 20_000_000, dtype=np.int64)
    x = 2.0 * t_ns / 1e9
    xy = np.column_stack([x, np.full(x.size, 0.25)])
    cells, enter, exit_ = footprint_crossings(t_ns, xy, np.zeros(x.size), FOOTPRINT, 0.5)
    on_path = (cells[:, 1] == 0) & (cells[:, 0] == 20)  # centre (10.25, 0.25)
    assert np.count_nonzero(on_path) == 1
    assert enter[on_path][0] / 1e9 == pytest.approx((10.25 - 1.3 - 1.5) / 2.0, abs=0.03)
    assert (exit_[on_path] - enter[on_path])[0] / 1e9 == pytest.approx(1.5, abs=0.03)
    # Lateral reach: +-0.9 m about the path; cells beyond are never covered.
    assert set(np.unique(cells[:, 1]).tolist()) == {-1, 0, 1}  # centres -0.25, 0.25, 0.75 m


def test_measured_map_is_rougher_where_the_terrain_is_rough(measured_map):
    from terrain_ssl.sim.world import World
    truth = World(WORLD.__class__(terrain=WORLD.terrain, lidar=None), seed=1).terrain
    iso = truth.ground_truth.iso_class_at(measured_map.centres_xy_m)
    smooth = np.median(measured_map.roughness[iso <= 1])   # A, B
    rough = np.median(measured_map.roughness[iso >= 4])    # E, F
    assert len(measured_map) > 500
    assert rough > 4.0 * smooth
    # Uncertainty: the crossing-to-crossing spread (6 crossings per cell: 2 speeds x 3 laps),
    # one sigma in log space like the learner's; the shock of one crossing scatters.
    assert np.all(measured_map.uncertainty >= 0.0)
    relative = np.median(measured_map.uncertainty / measured_map.roughness)
    assert 0.05 < relative < 2.0


def test_measured_oracle_keeps_under_the_limit_better_than_constant_speed(measured_map):
    common = dict(laps=1, seed=1, world=WORLD, advisor=ADVISOR)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common))
    oracle = run_closed_loop(ClosedLoopConfig(policy='oracle', oracle_map=measured_map,
                                              **common))
    fast, careful = constant.summary([0]), oracle.summary([0])
    assert careful['over_limit'] <= 0.5 * fast['over_limit']
    assert careful['peak_shock_mps2'] < fast['peak_shock_mps2']
    # Smooth ground near v_max (the crossing spread keeps a margin), rough ground slow.
    command = oracle.steps['command_mps']
    assert command.max() >= 0.8 * ADVISOR['v_max_mps'] and command.min() <= 2.0
    with pytest.raises(ValueError):
        run_closed_loop(ClosedLoopConfig(policy='oracle', **common))  # no map


def test_closed_loop_command_registers_and_refuses_bad_arguments(capsys):
    import argparse

    from terrain_ssl.sim.closed_loop_cli import register
    parser = argparse.ArgumentParser(prog='terrain-ssl')
    register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(['closed-loop', '--laps', '1', '--quick'])
    assert args.quick and args.seed == 0
    assert args.func(args) == 2  # the targets are over laps 2+: one lap cannot show them
    assert '--laps must be >= 2' in capsys.readouterr().err
    args = parser.parse_args(['closed-loop', '--shock-limit', '0'])
    assert args.func(args) == 2


@pytest.mark.ros
def test_by_the_mask_the_speed_changes_as_nav2_would_change_it():
    """--speed-source mask: the SpeedFilter reads the mask under base_link once per costmap
    update (the limit holds in between), and the velocity smoother raises the speed at most at
    accel_limit; a lower limit applies at once (the vehicle brakes)."""
    from std_msgs.msg import Header

    from terrain_ssl.core.advisor import VehicleState
    from terrain_ssl.ros.conversions import occupancy_grid
    from terrain_ssl.sim.closed_loop import ClosedLoopRun, NodeStack

    config = ClosedLoopConfig(policy='terrain_ssl', speed_source='mask', advisor=ADVISOR,
                              speed_filter_period_s=0.2)
    run = ClosedLoopRun(config)
    run.stack = NodeStack(config)
    try:
        cells = np.full((4, 20), 50, dtype=np.int8)  # x in [0, 5) m: 50 % of 6 m/s
        cells[:, 10:] = 100                          # x in [5, 10) m: no limit below v_max
        run.stack.speed_mask = occupancy_grid(cells, 0.0, -1.0, 0.5, Header(frame_id='odom'))
        step_ns, accel = 50_000_000, 1.0  # control period; AdvisorConfig's accel_limit_mps2
        commands, command = [], 1.5
        for k in range(80):
            x = 6.0 if 41 <= k <= 60 else 1.0  # on smooth ground from step 41 to 60
            command = run.nav2_command(VehicleState(x, 0.0, 0.0, command), 10**9 + k * step_ns,
                                        command)
            commands.append(command)
        commands = np.array(commands)
        assert np.diff(commands).max() <= accel * 0.05 + 1e-9  # the smoother's ramp
        assert commands[40] == pytest.approx(3.0)  # reached the slow cells' limit
        # The filter reads every 4th step (0.2 s): on smooth ground from step 41, the limit
        # holds until the read at step 44, then the speed ramps up.
        np.testing.assert_allclose(commands[41:44], 3.0)
        assert commands[44] == pytest.approx(3.05) and commands[60] == pytest.approx(3.85)
        # Back over the slow cells from step 61: unchanged until the read at step 64, which
        # applies at once (braking is not ramped).
        assert commands[63] == pytest.approx(4.0) and commands[64] == pytest.approx(3.0)
    finally:
        run.stack.close()
