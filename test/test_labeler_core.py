"""The Labeler end to end on a synthetic drive (no ROS): labels, mounts, bad input, live config.

The synthetic world: a straight road at heading 0.3 rad whose height varies only along it, smooth
except for a rough stretch; the body's vertical acceleration is the mean of the road's second
time derivative under both axles; the lidar samples the ground ahead.
"""

from dataclasses import replace

import numpy as np
import pytest

from terrain_ssl.core.geometry import PoseHistory, quat_from_rpy, quat_multiply, quat_to_matrix
from terrain_ssl.core.labeler import Labeler, LabelerConfig, classify
from terrain_ssl.core.patches import FEATURE_INDEX

S = 1_000_000_000
G = 9.81
HEADING = 0.3
WAVELENGTHS = np.array([0.4, 0.7, 1.1, 1.7, 2.6])
ROUGH_FROM, ROUGH_TO = 30.0, 45.0  # along-track stretch (m)


def amplitude(s):
    return np.where((s > ROUGH_FROM) & (s < ROUGH_TO), 0.012, 0.002)


def height(s):
    phases = np.arange(WAVELENGTHS.shape[0])[:, None]
    waves = np.sin(2 * np.pi * np.asarray(s)[None] / WAVELENGTHS[:, None] + phases)
    return amplitude(s) * waves.sum(axis=0)


def height_dd(s):
    """d^2 h / ds^2 (1/m), ignoring the amplitude's steps."""
    phases = np.arange(WAVELENGTHS.shape[0])[:, None]
    k = 2 * np.pi / WAVELENGTHS[:, None]
    return -amplitude(s) * (k * k * np.sin(k * np.asarray(s)[None] + phases)).sum(axis=0)


def synthetic_drive(duration_s=16.0, speed=4.0, imu_mount=None, imu_orientation=True, seed=0,
                    start_s=0.0, t0_s=100.0):
    """Time-ordered events ('imu'|'odom'|'scan', t_ns, payload...)."""
    rng = np.random.default_rng(seed)
    direction = np.array([np.cos(HEADING), np.sin(HEADING), 0.0])
    yaw_quat = quat_from_rpy(0.0, 0.0, HEADING)
    mount = np.array([0.0, 0.0, 0.0, 1.0]) if imu_mount is None else imu_mount
    imu_quat = quat_multiply(yaw_quat, mount)
    world_to_imu = quat_to_matrix(imu_quat).T
    events = []
    imu_t = np.arange(0.0, duration_s, 1 / 200)
    s = start_s + speed * imu_t
    vertical = speed ** 2 * 0.5 * (height_dd(s) + height_dd(s + 2.0)) \
        + rng.normal(0, 0.05, s.shape[0])
    specific_force = np.column_stack([0 * s, 0 * s, G + vertical]) @ world_to_imu.T
    for t, accel in zip(imu_t, specific_force):
        events.append(('imu', int((t0_s + t) * S), accel, imu_quat if imu_orientation else None))
    for t in np.arange(0.0, duration_s, 1 / 50):
        position = (start_s + speed * t) * direction
        events.append(('odom', int((t0_s + t) * S), position, yaw_quat,
                       np.array([speed, 0.0, 0.0])))
    rotation = quat_to_matrix(yaw_quat)
    for t in np.arange(0.05, duration_s, 1 / 10):
        lidar = (start_s + speed * t) * direction + rotation @ np.array([0.3, 0.0, 1.6])
        ahead = rng.uniform(2.5, 20.0, 6000)
        across = rng.uniform(-3.0, 3.0, 6000)
        s = start_s + speed * t + 0.3 + ahead
        world = np.column_stack([lidar[0] + ahead * direction[0] - across * direction[1],
                                 lidar[1] + ahead * direction[1] + across * direction[0],
                                 height(s) + rng.normal(0, 0.003, s.shape[0])])
        events.append(('scan', int((t0_s + t) * S), (world - lidar) @ rotation))
    order = {'odom': 0, 'imu': 1, 'scan': 2}
    events.sort(key=lambda event: (event[1], order[event[0]]))
    return events


def run(labeler, events):
    labels = []
    for kind, t_ns, *payload in events:
        if kind == 'imu':
            labeler.add_imu(t_ns, *payload)
        elif kind == 'odom':
            labeler.add_odometry(t_ns, *payload)
        else:
            labeler.add_scan(t_ns, payload[0])
        batch = labeler.pop_labels()
        if batch is not None:
            labels.append(batch)
    return labels


def along_track(centres):
    return centres[:, 0] * np.cos(HEADING) + centres[:, 1] * np.sin(HEADING)


def collect(batches):
    keys = np.concatenate([b.keys for b in batches])
    order = np.argsort(keys)
    return {name: np.concatenate([getattr(b, name) for b in batches])[order]
            for name in ('keys', 'centres', 'features', 'roughness', 'roughness_class', 'speed',
                         'seen_to_cross_s', 'shock')}


@pytest.fixture(scope='module')
def drive():
    return synthetic_drive()


@pytest.fixture(scope='module')
def reference_labels(drive):
    labeler = Labeler()
    return collect(run(labeler, drive)), labeler


def test_labels_follow_the_rough_stretch(reference_labels):
    labels, labeler = reference_labels
    s = along_track(labels['centres'])
    rough = (s > ROUGH_FROM + 2.5) & (s < ROUGH_TO - 0.5)
    smooth = (s < ROUGH_FROM - 2.5) | (s > ROUGH_TO + 2.5)
    assert rough.sum() >= 40 and smooth.sum() >= 40
    assert np.median(labels['roughness'][rough]) > 4 * np.median(labels['roughness'][smooth])
    # What the lidar saw before the crossing agrees with what the IMU felt.
    residual = labels['features'][:, FEATURE_INDEX['plane_residual']]
    assert np.median(residual[rough]) > 2 * np.median(residual[smooth])  # 3 mm range noise
    assert labels['speed'] == pytest.approx(4.0, rel=1e-6)
    assert labels['roughness'] == pytest.approx(labels['shock'] / labels['speed'])
    # Cells are seen up to ~20 m ahead: several seconds before the crossing at 4 m/s.
    assert np.median(labels['seen_to_cross_s']) > 2.0
    assert labeler.rejects.get('odom_missing', 0) <= 1  # at most the first scan, before odometry
    assert labeler.stats['labels'] == labels['keys'].shape[0]


@pytest.mark.parametrize('use_orientation', [True, False])
def test_imu_with_gravity_on_plus_y_gives_the_same_labels(reference_labels, use_orientation):
    labels, _ = reference_labels
    mount = quat_from_rpy(np.pi / 2, 0.0, 0.0)  # sensor +y up
    rotated = collect(run(Labeler(), synthetic_drive(imu_mount=mount,
                                                     imu_orientation=use_orientation)))
    common, mine, theirs = np.intersect1d(labels['keys'], rotated['keys'], return_indices=True)
    assert common.shape[0] >= 0.95 * labels['keys'].shape[0]
    assert rotated['roughness'][theirs] == pytest.approx(labels['roughness'][mine], rel=0.05)


def test_class_thresholds_apply_live_to_the_next_label(drive):
    # This drive labels ~1.5 on smooth and ~9 on rough ground: classes split at 2 / 5.
    labeler = Labeler(LabelerConfig(label_moderate_threshold=2.0, label_rough_threshold=5.0))
    first_half = [e for e in drive if e[1] < 108 * S]
    second_half = [e for e in drive if e[1] >= 108 * S]
    before = collect(run(labeler, first_half))
    config = replace(labeler.config, label_moderate_threshold=1e-6, label_rough_threshold=2e-6)
    labeler.reconfigure(config)
    after = collect(run(labeler, second_half))
    assert (before['roughness_class'] == classify(before['roughness'], 2.0, 5.0)).all()
    assert len(set(before['roughness_class'].tolist())) >= 2
    assert (after['roughness_class'] == 2).all()
    assert len(labeler.cells) > 0  # thresholds do not restart the map
    with pytest.raises(ValueError, match='moderate'):
        labeler.reconfigure(replace(config, label_moderate_threshold=3.0))
    assert labeler.config.label_moderate_threshold == 1e-6  # the old value stays


def test_label_batches_carry_the_same_labels_in_fewer_messages(drive):
    at_once = run(Labeler(replace(LabelerConfig(), label_batch_s=0.0)), drive)
    labeler = Labeler(replace(LabelerConfig(), label_batch_s=0.3))
    batched = run(labeler, drive)
    # The last batch waits for IMU samples that never come ...
    assert sum(map(len, batched)) < sum(map(len, at_once))
    labeler.flush_labels()  # ... until the end of the recording releases it
    batched.append(labeler.pop_labels())
    assert len(batched) < 0.5 * len(at_once)
    first, second = collect(at_once), collect(batched)
    assert np.array_equal(first['keys'], second['keys'])
    assert second['features'] == pytest.approx(first['features'], rel=1e-12)
    # The same IMU windows (the speed may use odometry that arrived while the batch waited).
    assert second['shock'] == pytest.approx(first['shock'], rel=1e-9)
    assert second['roughness'] == pytest.approx(first['roughness'], rel=1e-3)


def test_reset_keeps_the_labels_already_covered(drive):
    complete = sum(map(len, run(Labeler(replace(LabelerConfig(), label_batch_s=0.0)), drive)))
    labeler = Labeler(replace(LabelerConfig(), label_batch_s=0.3))
    popped = sum(map(len, run(labeler, drive)))
    assert popped < complete  # a batch is waiting
    first_imu = [event for event in drive if event[0] == 'imu'][:5]
    _, t_ns, *payload = first_imu[0]
    labeler.add_imu(t_ns, *payload)  # back by the drive's length: a lone stamp out of line ...
    assert labeler.stats['resets'] == 0 and labeler.rejects['stamp_out_of_line'] == 1
    for _, t_ns, *payload in first_imu[1:]:  # ... until the stream stays on the new time line
        labeler.add_imu(t_ns, *payload)
    assert labeler.stats['resets'] == 1
    kept = labeler.pop_labels()
    assert kept is not None and popped + len(kept) == complete


def test_cell_size_change_restarts_the_map(drive):
    labeler = Labeler()
    run(labeler, drive[: len(drive) // 3])
    assert len(labeler.cells) > 0
    labeler.reconfigure(replace(labeler.config, patch_size=1.0))
    assert len(labeler.cells) == 0 and labeler.config.patch_size == 1.0


def test_looping_bag_resets_and_labels_again(drive):
    labeler = Labeler()
    first = collect(run(labeler, drive))
    second = collect(run(labeler, drive))  # stamps jump back by the drive's length
    assert labeler.stats['resets'] == 1
    assert labeler.rejects['time_backwards'] == 1  # the first stream to jump resets all
    assert second['keys'].shape[0] >= 0.95 * first['keys'].shape[0]
    assert np.median(second['roughness']) == pytest.approx(np.median(first['roughness']),
                                                           rel=0.05)


def test_bad_input_is_counted_not_raised(drive):
    labeler = Labeler()
    events = drive[:1500]
    run(labeler, events)
    t_ns = labeler._last['imu'] + S // 200
    labeler.add_imu(t_ns, [np.nan, 0.0, 9.8])
    labeler.add_imu(t_ns, [np.inf, 0.0, 9.8])
    labeler.add_odometry(t_ns, [0, 0, np.nan], [0, 0, 0, 1], [1, 0, 0])
    labeler.add_odometry(t_ns, [0, 0, 0], [0, 0, 0, 0], [1, 0, 0])
    assert labeler.add_scan(t_ns, np.zeros((0, 3))) is None
    assert labeler.add_scan(t_ns, np.full((100, 3), np.nan)) is None
    assert labeler.add_scan(t_ns, np.zeros((10, 2))) is None
    assert labeler.add_scan(t_ns + 5 * S, np.ones((100, 3))) is None  # odometry far behind
    earlier = labeler._last['odometry'] - S // 100
    labeler.add_odometry(earlier, [0, 0, 0], [0, 0, 0, 1], [1, 0, 0])  # out of order
    inputs = {reason: count for reason, count in labeler.rejects.items()
              if not reason.startswith('label_')}  # labels dropped in the filter warm-up
    assert inputs == {'nonfinite_imu': 2, 'nonfinite_odometry': 2, 'empty_cloud': 2,
                      'malformed_cloud': 1, 'odom_missing': 1, 'out_of_order': 1}
    assert labeler.stats['points_nonfinite'] == 100


def test_imu_gap_is_counted_and_labels_across_it_are_dropped(drive):
    # Drop 0.5 s of IMU in the middle of the drive.
    gap = [e for e in drive if not (e[0] == 'imu' and 108 * S <= e[1] < 108.5 * S)]
    labeler = Labeler()
    labels = collect(run(labeler, gap))
    assert labeler.rejects['imu_gap'] == 1
    reference = Labeler()
    expected = collect(run(reference, drive))['keys'].shape[0]

    def dropped(labeler):
        return sum(count for reason, count in labeler.rejects.items()
                   if reason in ('label_imu_gap', 'label_imu_warmup'))

    assert dropped(labeler) > dropped(reference)  # the gap and the filters' restart after it
    assert labels['keys'].shape[0] + dropped(labeler) - dropped(reference) == expected


def test_invalid_configuration_raises():
    with pytest.raises(ValueError):
        Labeler(LabelerConfig(vibration_band_low_hz=40.0))
    with pytest.raises(ValueError):
        Labeler(LabelerConfig(vibration_shock_measure='loud'))
    with pytest.raises(ValueError):
        Labeler(LabelerConfig(patch_size=0.0))


def test_mean_speeds_over_many_windows_follow_the_one_window_rules():
    poses = PoseHistory(horizon_s=100.0)
    rng = np.random.default_rng(3)
    stamps = np.cumsum(rng.integers(5, 300, 200)) * 1_000_000  # 5-300 ms apart
    for t_ns in stamps:
        poses.append(int(t_ns), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0),
                     tuple(rng.normal(0.0, 3.0, 3)), (0.0, 0.0, 0.0))
    starts = np.concatenate([stamps[::3] - rng.integers(0, 150_000_000, 67), [0, stamps[-1] + 1]])
    ends = starts + rng.integers(0, 400_000_000, starts.shape[0])
    speeds = poses.mean_speeds(starts, ends)
    velocity = np.array(poses.linear_velocity)
    for start, end, speed in zip(starts, ends, speeds):
        inside = (stamps >= start) & (stamps <= end)
        if not inside.any():  # the next twist, if it is within 0.1 s of the start
            index = min(int(np.searchsorted(stamps, start)), stamps.shape[0] - 1)
            inside = np.zeros(stamps.shape[0], dtype=bool)
            inside[index] = abs(int(stamps[index]) - int(start)) <= 100_000_000
        expected = np.mean(np.hypot(velocity[inside, 0], velocity[inside, 1])) \
            if inside.any() else np.nan
        assert speed == pytest.approx(expected, rel=1e-15, nan_ok=True)
        assert (poses.mean_speed(int(start), int(end)) is None) == np.isnan(expected)


def test_float32_cloud_view_gives_what_its_float64_copy_gives(drive):
    """The node hands add_scan a float32 (N, 3) view of the cloud: the same patches, labels and
    counts as the float64 copy, non-finite points (NaN or Inf in any coordinate) included."""
    rng = np.random.default_rng(2)
    inputs = {'float64': [], 'float32 view': []}
    for kind, t_ns, *payload in drive:
        if kind != 'scan':
            for events in inputs.values():
                events.append((kind, t_ns, *payload))
            continue
        points32 = payload[0].astype(np.float32)
        bad = rng.random(points32.shape) < 0.01
        points32[bad] = rng.choice([np.nan, np.inf, -np.inf], int(bad.sum()))
        # As the node's pointcloud2_xyz_view: x, y, z inside 16-byte records.
        records = np.zeros((points32.shape[0], 4), dtype=np.float32)
        records[:, :3] = points32
        view = np.lib.stride_tricks.as_strided(records, shape=points32.shape, strides=(16, 4),
                                               writeable=False)
        inputs['float64'].append((kind, t_ns, points32.astype(np.float64)))
        inputs['float32 view'].append((kind, t_ns, view))
    labelers = {name: Labeler() for name in inputs}
    labels = {name: collect(run(labelers[name], events)) for name, events in inputs.items()}
    assert labelers['float64'].stats == labelers['float32 view'].stats
    assert labelers['float64'].stats['points_nonfinite'] > 0
    assert labels['float64'].keys() == labels['float32 view'].keys()
    for name, values in labels['float64'].items():
        assert np.array_equal(values, labels['float32 view'][name]), name
    for name in ('keys', 'centres', 'features'):
        assert np.array_equal(getattr(labelers['float64'].cells, name),
                              getattr(labelers['float32 view'].cells, name))


def test_speed_exponent_sets_how_labels_normalise_shock(reference_labels, drive):
    """label.speed_exponent: roughness = shock / speed**exponent, the same crossings labelled."""
    unit_exponent, _ = reference_labels
    np.testing.assert_allclose(unit_exponent['roughness'],
                               unit_exponent['shock'] / unit_exponent['speed'], rtol=1e-6)
    half = collect(run(Labeler(LabelerConfig(label_speed_exponent=0.5)), drive))
    np.testing.assert_array_equal(half['keys'], unit_exponent['keys'])
    np.testing.assert_allclose(half['shock'], unit_exponent['shock'], rtol=1e-9)
    np.testing.assert_allclose(half['roughness'], half['shock'] / np.sqrt(half['speed']),
                               rtol=1e-6)
    # At 4 m/s, shock / v^0.5 is sqrt(4) = 2x shock / v.
    ratio = half['roughness'] / unit_exponent['roughness']
    np.testing.assert_allclose(ratio, np.sqrt(unit_exponent['speed']), rtol=1e-6)
    assert np.median(ratio) == pytest.approx(2.0, rel=0.02)
