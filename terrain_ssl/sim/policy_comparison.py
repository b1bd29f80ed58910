"""Constant speed, terrain_ssl and the oracle on the same simulated route: the closed-loop table.

The scenario: the simulated vehicle (base_link on the rear axle, front axle 2.6 m ahead, track
1.6 m) with the labeler's footprint over its wheels, a shock limit of 2 m/s^2 (rms over 0.5 s IMU
windows) and speeds from 1 m/s (the labeler's label.min_speed: slower, no labels come) to 6 m/s.
The oracle drives by the same speed rule on the terrain's measured roughness
(terrain_ssl.sim.oracle), from calibration drives along the lines the evaluation laps drive.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from terrain_ssl.core.advisor import AdvisorConfig
from terrain_ssl.core.roughness_map import RoughnessMap
from terrain_ssl.sim.closed_loop import ClosedLoopConfig, format_table, run_closed_loop
from terrain_ssl.sim.oracle import labeler_footprint, oracle_calibration_drive
from terrain_ssl.sim.world import WorldConfig

SCENARIO_LABELER = {'footprint.length': 3.0, 'footprint.offset_x': 1.3, 'footprint.width': 1.8}
SCENARIO_ADVISOR = {'shock_limit_mps2': 2.0, 'v_max_mps': 6.0, 'v_min_mps': 1.0,
                    'cautious_speed_mps': 1.5, 'front_offset_m': 2.6,
                    'uncertainty_weight': AdvisorConfig.uncertainty_weight,
                    'map_memory_s': 20.0,
                    # The speed mask's ground contact: the labeler's footprint, whose crossings
                    # define roughness (docs/nav2.md).
                    'footprint_length_m': SCENARIO_LABELER['footprint.length'],
                    'footprint_width_m': SCENARIO_LABELER['footprint.width'],
                    'footprint_offset_x_m': SCENARIO_LABELER['footprint.offset_x']}
ORACLE_SPEEDS_MPS = (2.0, 4.0)


def compare_policies(laps: int = 3, seed: int = 0, world: Optional[WorldConfig] = None,
                     advisor: Optional[dict] = None, labeler: Optional[dict] = None,
                     learner: Optional[dict] = None, oracle_speeds_mps=ORACLE_SPEEDS_MPS,
                     with_safe_oracle: bool = True,
                     progress: Optional[Callable[[str], None]] = None,
                     speed_source: str = 'advisor') -> dict:
    """Run constant v_max, terrain_ssl and the oracle(s) for `laps` laps; returns
    {'results': [ClosedLoopResult...], 'report': str (settings, policies, table),
    'fewer_events': float, 'lap_time_ratio': float, 'oracle_maps': {name: RoughnessMap}}.

    'oracle' uses each cell's mean label with the crossings' spread as the uncertainty;
    'oracle-mean' the mean alone; 'oracle-max' (with `with_safe_oracle`) the worst 0.5 s IMU
    window each cell took part in. `speed_source`: terrain_ssl drives at the advisor's
    speed_limit, or at the speed_mask under base_link as Nav2's SpeedFilter reads it.
    """
    world = world if world is not None else WorldConfig()
    advisor = dict(SCENARIO_ADVISOR if advisor is None else advisor)
    labeler = dict(SCENARIO_LABELER if labeler is None else labeler)
    common = dict(laps=laps, seed=seed, world=world, advisor=advisor, labeler=labeler,
                  learner=dict(learner or {}))
    learned = run_closed_loop(ClosedLoopConfig(policy='terrain_ssl', speed_source=speed_source,
                                               **common), progress)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common), progress)
    oracle_maps = measured_oracle_maps(world, seed, oracle_speeds_mps, laps, labeler,
                                       with_safe_oracle)
    results = [constant, learned]
    for name, oracle_map in oracle_maps.items():
        result = run_closed_loop(ClosedLoopConfig(policy='oracle', oracle_map=oracle_map,
                                                  **common), progress)
        result.policy = name
        results.append(result)
    later = range(1, laps)
    s_const, s_learn, s_oracle = (r.summary(later) for r in results[:3])
    fewer = 1.0 - s_learn['over_limit'] / max(s_const['over_limit'], 1)
    ratio = s_learn['lap_time_s'] / s_oracle['lap_time_s']
    report = (_settings_lines(laps, seed, world, advisor, oracle_speeds_mps, with_safe_oracle,
                              speed_source)
              + [format_table(results)] + _comparison_lines(results, laps, fewer, ratio))
    return {'results': results, 'report': '\n'.join(report), 'fewer_events': fewer,
            'lap_time_ratio': ratio, 'oracle_maps': oracle_maps}


def measured_oracle_maps(world: WorldConfig, seed: int, speeds_mps, laps: int, labeler: dict,
                         with_safe_oracle: bool) -> dict:
    """name -> RoughnessMap of the oracles: 'oracle', 'oracle-mean'[, 'oracle-max']."""
    footprint = labeler_footprint(labeler)
    min_speed = float(labeler.get('label.min_speed', 1.0))
    measured = oracle_calibration_drive(world, seed, speeds_mps, laps=laps, footprint=footprint,
                                        min_speed_mps=min_speed)
    maps = {'oracle': measured,
            'oracle-mean': RoughnessMap(measured.centres_xy_m, measured.roughness,
                                        np.zeros(len(measured)), measured.cell_size_m)}
    if with_safe_oracle:
        maps['oracle-max'] = oracle_calibration_drive(
            world, seed, speeds_mps, laps=laps, footprint=footprint, min_speed_mps=min_speed,
            per='window')
    return maps


def _settings_lines(laps, seed, world, advisor, oracle_speeds_mps, with_safe_oracle,
                    speed_source) -> list:
    speeds = ', '.join(f'{v:g}' for v in oracle_speeds_mps)
    lines = [
        f'closed loop: {laps} laps of {world.terrain.route.length_m:.0f} m, seed {seed}, shock '
        f'limit {advisor["shock_limit_mps2"]} m/s^2 (rms over 0.5 s IMU windows), v_min '
        f'{advisor["v_min_mps"]}, v_max {advisor["v_max_mps"]} m/s, uncertainty weight '
        f'{advisor.get("uncertainty_weight", AdvisorConfig().uncertainty_weight)}',
        'constant: always v_max.  terrain_ssl: the three real nodes, cold start, learning live'
        + (", driving at the speed_mask under base_link as Nav2 would (SpeedFilter read "
           "once per costmap update, velocity smoother ramp at accel_limit_mps2)."
           if speed_source == 'mask' else ", driving at the advisor's speed_limit."),
        f'oracle: the same speed rule (advisor, same settings) on the measured roughness of '
        f'the terrain: per cell the labeler\'s label (shock over the footprint crossing / '
        f'speed) from constant-speed calibration drives at {speeds} m/s ({laps} laps each, the '
        f'lines the laps drive): the mean over the crossings, and their spread as its '
        f'uncertainty (weighted like the learner\'s).',
        'oracle-mean: the same map without the spread (the mean alone decides).',
    ]
    if with_safe_oracle:
        lines.append('oracle-max: the same, but per cell the worst 0.5 s IMU window '
                     '(shock / speed) it took part in: the slowest a perfect map needs to be.')
    return lines


def _comparison_lines(results: list, laps: int, fewer: float, ratio: float) -> list:
    later = range(1, laps)
    learned = results[1]
    s_learn = learned.summary(later)
    lines = [f'laps 2+: terrain_ssl has {100 * fewer:.0f}% fewer over-limit events than '
             f'constant',
             f'laps 2+: terrain_ssl lap time = {ratio:.2f} x oracle']
    for other in results[3:]:
        lines.append(f'laps 2+: terrain_ssl lap time = '
                     f'{s_learn["lap_time_s"] / other.summary(later)["lap_time_s"]:.2f} x '
                     f'{other.policy}')
    later_reasons: dict = {}
    for (lap, reason), count in learned.info.get('advice_reasons', {}).items():
        if lap >= 1:
            later_reasons[reason] = later_reasons.get(reason, 0) + count
    lines.append(f'terrain_ssl advisor reasons, laps 2+ (control steps): {later_reasons}')
    lines.append(f'terrain_ssl late hazards (limit dropped faster than planned): '
                 f'{learned.info.get("late_hazards")}; rejects: {learned.info.get("rejected")}')
    return lines
