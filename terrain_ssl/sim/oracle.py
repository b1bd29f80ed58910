"""The oracle's knowledge of the terrain: per cell, the shock per speed the labeler measures there.

Constant-speed calibration drives (no lidar) cross every cell of the route; for every crossing of
the labeler's footprint over a cell, the shock over the crossing divided by the mean speed is the
label the labeler would give it. Per cell, the mean over its crossings is the terrain's true
roughness in the learner's own units, and the crossings' spread its uncertainty: the shock of one
crossing scatters about the mean even when the terrain is known exactly, and the speed rule adds
`uncertainty_weight` x that spread, as it adds the learner's uncertainty for terrain_ssl.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from terrain_ssl.core.roughness_map import RoughnessMap
from terrain_ssl.core.labeler import LabelerConfig
from terrain_ssl.sim.closed_loop import (NS_PER_S, ClosedLoopConfig, ClosedLoopResult,
                                         run_closed_loop)
from terrain_ssl.sim.world import World, WorldConfig

LOG_FLOOR = 1e-3  # (m/s^2)/(m/s), as the learner's roughness_floor: log of a zero label


@dataclass(frozen=True)
class Footprint:
    """The rectangle under the vehicle that makes the IMU shake: the labeler's footprint.*
    parameters (core.labeler.LabelerConfig, tested by core.association.CellMap)."""

    length_m: float       # along base_link x
    width_m: float        # along base_link y
    offset_x_m: float     # its centre ahead of base_link


def labeler_footprint(labeler_parameters: dict) -> Footprint:
    """The footprint a labeler started with these parameters (node names) uses."""
    default = LabelerConfig()
    return Footprint(
        float(labeler_parameters.get('footprint.length', default.footprint_length)),
        float(labeler_parameters.get('footprint.width', default.footprint_width)),
        float(labeler_parameters.get('footprint.offset_x', default.footprint_offset_x)))


def covered_cells(xy_m, yaw_rad, footprint: Footprint, cell_size_m: float,
                  origin_xy_m=(0.0, 0.0)):
    """Grid cells under the footprint at each pose, as the labeler's association decides
    (core.association.CellMap.covered): a cell is covered while its centre lies inside the
    footprint rectangle.

    Returns (pose index (P,), cell index (P, 2) int: centre = origin + (index + 0.5) * cell).
    """
    xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
    yaw = np.asarray(yaw_rad, dtype=np.float64)
    origin = np.asarray(origin_xy_m, dtype=np.float64)
    reach = float(np.hypot(abs(footprint.offset_x_m) + 0.5 * footprint.length_m,
                           0.5 * footprint.width_m))
    n_reach = int(np.ceil(reach / cell_size_m)) + 1
    span = np.arange(-n_reach, n_reach + 1)
    dx_cells, dy_cells = (a.ravel() for a in np.meshgrid(span, span))
    poses, cells = [np.zeros(0, dtype=np.int64)], [np.zeros((0, 2), dtype=np.int64)]
    for lo in range(0, xy.shape[0], 2000):  # chunks bound the (poses x candidates) arrays
        part = slice(lo, min(lo + 2000, xy.shape[0]))
        base = np.floor((xy[part] - origin) / cell_size_m).astype(np.int64)
        ix = base[:, 0, None] + dx_cells[None, :]
        iy = base[:, 1, None] + dy_cells[None, :]
        dx = origin[0] + (ix + 0.5) * cell_size_m - xy[part, 0, None]
        dy = origin[1] + (iy + 0.5) * cell_size_m - xy[part, 1, None]
        c, s = np.cos(yaw[part])[:, None], np.sin(yaw[part])[:, None]
        inside = (np.abs(c * dx + s * dy - footprint.offset_x_m) <= 0.5 * footprint.length_m) & \
            (np.abs(-s * dx + c * dy) <= 0.5 * footprint.width_m)
        rows, cols = np.nonzero(inside)
        poses.append(rows + lo)
        cells.append(np.column_stack([ix[rows, cols], iy[rows, cols]]))
    return np.concatenate(poses), np.concatenate(cells)


def footprint_crossings(t_ns, xy_m, yaw_rad, footprint: Footprint, cell_size_m: float,
                        origin_xy_m=(0.0, 0.0)):
    """Every passage of the footprint over a grid cell (`covered_cells`), from the first to the
    last covered pose (a pose not covering the cell in between starts a new crossing).

    Returns (cell index (K, 2), enter_ns (K,), exit_ns (K,)).
    """
    t_ns = np.asarray(t_ns, dtype=np.int64)
    pose, cell = covered_cells(xy_m, yaw_rad, footprint, cell_size_m, origin_xy_m)
    order = np.lexsort((pose, cell[:, 1], cell[:, 0]))
    pose, cell = pose[order], cell[order]
    new = np.ones(pose.size, dtype=bool)
    new[1:] = (cell[1:] != cell[:-1]).any(axis=1) | (pose[1:] != pose[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], pose.size) - 1
    return cell[first], t_ns[pose[first]], t_ns[pose[last]]


def _cell_map(cell_index, values, cell_size_m, origin_xy_m, reduce: str) -> RoughnessMap:
    """One value per cell as a RoughnessMap: reduce='mean' or 'max' of its values (uncertainty
    0), or 'mean_spread': the mean, and as uncertainty its one-sigma spread in log space like
    the learner's (mean * expm1(std of log values); 0 for a cell crossed once)."""
    ok = np.isfinite(values)
    keys, inverse = np.unique(cell_index[ok], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    uncertainty = np.zeros(keys.shape[0])
    if reduce in ('mean', 'mean_spread'):
        count = np.bincount(inverse)
        value = np.bincount(inverse, weights=values[ok]) / count
        if reduce == 'mean_spread':
            log_value = np.log(values[ok] + LOG_FLOOR)
            log_mean = np.bincount(inverse, weights=log_value) / count
            log_var = np.bincount(inverse, weights=(log_value - log_mean[inverse]) ** 2) / \
                np.maximum(count - 1, 1)
            uncertainty = value * np.expm1(np.sqrt(log_var))
    else:
        value = np.full(keys.shape[0], -np.inf)
        np.maximum.at(value, inverse, values[ok])
    xy = np.asarray(origin_xy_m) + (keys + 0.5) * cell_size_m
    return RoughnessMap(xy, value, uncertainty, cell_size_m)


def measured_roughness_map(result: ClosedLoopResult, footprint: Footprint, cell_size_m: float,
                           origin_xy_m=(0.0, 0.0), min_speed_mps: float = 1.0,
                           min_window_s: float = 0.1, measure: str = 'rms',
                           per: str = 'crossing') -> RoughnessMap:
    """Shock per speed ((m/s^2)/(m/s)) measured per cell on a drive: the terrain's true roughness.

    per='crossing': what the labeler would label: for every footprint crossing of a cell
        (`footprint_crossings` on the true trajectory), the shock (`measure` of the band-passed
        vertical IMU signal over the crossing, at least `min_window_s` long) over the mean true
        speed; per cell the mean over its crossings, and their spread as the uncertainty.
    per='window': what the over-limit count sees: for every fixed IMU window of the run
        (`shock_window_s`), its shock over its mean speed, given to every cell under the
        footprint during that window; per cell the max over its windows (the worst 0.5 s the
        cell took part in).
    Windows or crossings slower than `min_speed_mps` give no value. For per='crossing' the run
    must have kept its IMU signal (`imu_history_s` >= the run's length).
    """
    if per not in ('crossing', 'window'):
        raise ValueError(f"per must be 'crossing' or 'window', got {per!r}")
    path = result.trajectory
    speed = path['speed_mps']
    xy = np.column_stack([path['x_m'], path['y_m']])
    cumulative = np.concatenate([[0.0], np.cumsum(speed)])
    if per == 'window':
        pose, cell = covered_cells(xy, path['yaw_rad'], footprint, cell_size_m, origin_xy_m)
        end_s = result.windows['t_s']
        window_s = result.info.get('shock_window_s', 0.5)
        lo = np.searchsorted(path['t_s'], end_s - window_s, side='right')
        hi = np.searchsorted(path['t_s'], end_s, side='right')
        mean_speed = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
        window_r = np.where((hi > lo) & (mean_speed >= min_speed_mps),
                            result.windows['shock_mps2'] / np.maximum(mean_speed, 1e-9), np.nan)
        # The window each pose belongs to: the first window ending at or after it.
        of_pose = np.searchsorted(end_s, path['t_s'][pose], side='left')
        inside = of_pose < end_s.size
        inside[inside] &= path['t_s'][pose[inside]] > end_s[of_pose[inside]] - window_s
        return _cell_map(cell[inside], window_r[of_pose[inside]], cell_size_m, origin_xy_m,
                         'max')
    cell, roughness = crossing_roughness(result, footprint, cell_size_m, origin_xy_m,
                                         min_speed_mps, min_window_s, measure)
    return _cell_map(cell, roughness, cell_size_m, origin_xy_m, 'mean_spread')


def crossing_roughness(result: ClosedLoopResult, footprint: Footprint, cell_size_m: float,
                       origin_xy_m=(0.0, 0.0), min_speed_mps: float = 1.0,
                       min_window_s: float = 0.1, measure: str = 'rms'):
    """(cell index (K, 2), roughness (K,)) of every footprint crossing of a drive: what the
    labeler would label there (NaN where too slow or no IMU signal)."""
    if result.vibration is None:
        raise ValueError('the run kept no IMU signal (result.vibration is None)')
    path = result.trajectory
    t_ns, speed = path['t_ns'], path['speed_mps']
    xy = np.column_stack([path['x_m'], path['y_m']])
    cumulative = np.concatenate([[0.0], np.cumsum(speed)])
    cell, enter, exit_ = footprint_crossings(t_ns, xy, path['yaw_rad'], footprint, cell_size_m,
                                             origin_xy_m)
    half = int(0.5 * min_window_s * NS_PER_S)
    middle = (enter + exit_) // 2
    start, end = np.minimum(enter, middle - half), np.maximum(exit_, middle + half)
    lo = np.searchsorted(t_ns, start, side='left')
    hi = np.searchsorted(t_ns, end, side='right')
    mean_speed = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
    roughness = np.full(cell.shape[0], np.nan)
    for k in np.flatnonzero((hi > lo) & (mean_speed >= min_speed_mps)):
        shock, _ = result.vibration.shock(int(start[k]), int(end[k]), measure)
        if shock is not None:
            roughness[k] = shock / mean_speed[k]
    return cell, roughness


def oracle_calibration_drive(world_config: WorldConfig, seed: int, speeds_mps=(2.0, 4.0),
                             laps: int = 1, footprint: Optional[Footprint] = None,
                             min_speed_mps: float = 1.0,
                             shock_measure: str = 'rms', cell_size_m: float = 0.5,
                             per: str = 'crossing', shock_window_s: float = 0.5,
                             progress: Optional[Callable[[str], None]] = None) -> RoughnessMap:
    """The oracle's knowledge of the terrain: drive `laps` laps at each constant speed (no
    lidar) and measure per cell what the labeler measures there (`measured_roughness_map`).
    per='crossing': the mean over all the cell's crossings at all speeds, with their spread as
    the uncertainty; per='window': the mean over the speeds of the worst window per cell.
    This is the terrain's true shock per speed, in the learner's own units. `footprint`: the
    labeler's default when None."""
    footprint = footprint if footprint is not None else labeler_footprint({})
    maps, crossings = [], []
    for speed in speeds_mps:
        speed = float(speed)
        result = run_closed_loop(ClosedLoopConfig(
            policy='constant', laps=laps, seed=seed, world=world_config, imu_history_s=1e5,
            advisor={'v_max_mps': speed, 'v_min_mps': min(0.5, speed),
                     'cautious_speed_mps': speed}, shock_measure=shock_measure,
            shock_window_s=shock_window_s), progress=progress)
        truth = World(replace(world_config, lidar=None), seed=seed).terrain.ground_truth
        if per == 'crossing':
            crossings.append(crossing_roughness(result, footprint, cell_size_m,
                                                truth.origin_xy_m, min_speed_mps,
                                                measure=shock_measure))
        else:
            maps.append(measured_roughness_map(result, footprint, cell_size_m,
                                               truth.origin_xy_m, min_speed_mps,
                                               measure=shock_measure, per=per))
    if per == 'crossing':
        return _cell_map(np.concatenate([cell for cell, _ in crossings]),
                         np.concatenate([value for _, value in crossings]), cell_size_m,
                         truth.origin_xy_m, 'mean_spread')
    return average_maps(maps)


def average_maps(maps) -> RoughnessMap:
    """Cell-wise mean roughness of maps on the same grid (a cell in one map keeps its value)."""
    cell = maps[0].cell_size_m
    xy = np.concatenate([m.centres_xy_m for m in maps])
    values = np.concatenate([m.roughness for m in maps])
    index = np.rint(xy / cell * 2.0).astype(np.int64)  # half-cell keys: same centres, same key
    keys, first, inverse = np.unique(index, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    mean = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return RoughnessMap(xy[first], mean, np.zeros(keys.shape[0]), cell)


__all__ = ['Footprint', 'labeler_footprint', 'covered_cells', 'footprint_crossings',
           'crossing_roughness', 'measured_roughness_map', 'oracle_calibration_drive',
           'average_maps']
