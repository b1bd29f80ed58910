"""Soak: a long simulated drive replayed through the three nodes; memory must stay flat.

Simulates a 30-minute drive (VLP-16; `--quick`: 3 minutes), replays it with
terrain_ssl.replay.runner.run_replay (the real nodes, in bag time, as fast as the CPU allows) and
samples, every 0.5 s of wall time, this process's RSS and the sizes of every bounded structure:
the labeler's cell map, IMU and pose histories and pending crossings, the learner's untrained
batch, the advisor's remembered map. Reports RSS growth after the first 5 minutes of bag time
(`--quick`: after the first minute). Target: <= 10 %.

`--live`: the nodes as on the robot instead, `terrain-ssl bringup` (one process, use_sim_time)
fed by `terrain-ssl play` at 1x over DDS, as bench_robot_cpu.py runs them: the drive takes its
own length in wall time. Samples the bringup process's RSS and PSS every 5 s; the target is RSS
<= 300 MB at the end of the 30 minutes (and the same <= 10 % growth). The replay's own records
(every label, speed limit and map cell for its report) are not in this process.

Disk and time: the 30-minute bag is ~13 GB in a temp directory (deleted afterwards) and takes
~15 min to simulate plus the replay on the 2-core development machine.

    PYTHONPATH=. .venv/bin/python bench/bench_soak.py [--quick] [--live] [--bag DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TARGET_GROWTH = 0.10
TARGET_LIVE_RSS_MB = 300.0
LIVE_SAMPLE_PERIOD_S = 5.0


class NodeWatcher:
    """Keeps the nodes the replay builds (the runner's create_nodes is wrapped, not replaced) and
    samples RSS and structure sizes from a background thread."""

    def __init__(self, period_s: float = 0.5):
        self.period_s = period_s
        self.nodes = None
        self.rows = []
        self.last_error = ''
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def install(self) -> None:
        # The replay runner imported create_nodes by name: wrap it where the runner looks it up.
        import terrain_ssl.replay.runner as runner

        original = runner.create_nodes

        def create_nodes(*args, **kwargs):
            self.nodes = original(*args, **kwargs)
            return self.nodes
        runner.create_nodes = create_nodes

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def sample(self) -> dict | None:
        if self.nodes is None:
            return None
        labeler_node, learner, advisor_node = self.nodes
        labeler = labeler_node.labeler
        bag_ns = labeler._last.get('imu')
        if bag_ns is None:
            return None
        advisor_map = advisor_node.advisor.map
        return {
            'wall_s': time.perf_counter(),
            'bag_ns': int(bag_ns),
            'rss_mb': own_rss_mb(),
            'cells_in_map': len(labeler.cells),
            'imu_history': len(labeler.vibration._history),
            'pose_history': int(labeler.poses.t_ns.size),
            'pending_crossings': len(labeler._pending),
            'learner_pending': int(learner._pending_count),
            'advisor_map_cells': len(advisor_map) if advisor_map is not None else 0,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                row = self.sample()
            except (AttributeError, ValueError, RuntimeError) as error:  # mid-update, torn down
                self.last_error = repr(error)  # reported if no sample ever succeeds
                continue
            if row is not None:
                self.rows.append(row)


def own_rss_mb() -> float:
    """This process's resident memory, MB (10^6 bytes), from /proc (reported in KiB).

    Not bench_robot_cpu.memory_mb: importing that module sets the DDS profile with large
    shared-memory segments, which the replay would then map (measured: --quick peak 264 -> 333 MB).
    """
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError('no VmRSS in /proc/self/status')


def rss_after_warmup(bag_s: np.ndarray, rss_mb: np.ndarray, warmup_s: float) -> tuple:
    """(RSS at the first sample past the warm-up, the largest RSS from there on), MB."""
    after = bag_s >= warmup_s
    return float(rss_mb[np.argmax(after)]), float(rss_mb[after].max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='3 min drive instead of 30 min')
    parser.add_argument('--bag', help='replay this simulator bag instead of simulating one')
    parser.add_argument('--keep', help='write the simulated bag here and keep it')
    parser.add_argument('--json', help='also write the samples here (JSON)')
    parser.add_argument('--live', action='store_true',
                        help='the nodes in `terrain-ssl bringup`, fed at 1x over DDS')
    args = parser.parse_args()
    if args.live:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_robot_cpu  # noqa: F401  (an isolated DDS domain, set before rclpy loads)
    duration_s = 180.0 if args.quick else 1800.0
    warmup_s = 60.0 if args.quick else 300.0

    from terrain_ssl.replay.runner import ReplayOptions, run_replay
    from terrain_ssl.sim.bag import simulate_bag

    temp = None
    try:
        if args.bag:
            bag = Path(args.bag)
        else:
            if args.keep:
                bag = Path(args.keep)
            else:
                temp = Path(tempfile.mkdtemp(prefix='bench_soak_'))
                bag = temp / 'bag'
            started = time.perf_counter()
            simulate_bag(bag, duration_s=duration_s, seed=7, lidar='vlp16', speed='3:7:60',
                         overwrite=bool(args.keep))
            print(f'simulated a {duration_s / 60:.0f} min VLP-16 drive in '
                  f'{time.perf_counter() - started:.0f} s')

        if args.live:
            return live_soak(bag, warmup_s)
        watcher = NodeWatcher()
        watcher.install()
        watcher.start()
        started = time.perf_counter()
        try:
            record = run_replay(ReplayOptions(bag=str(bag), progress=False))
        finally:
            watcher.stop()
        wall_s = time.perf_counter() - started
        rows = watcher.rows
        if len(rows) < 3:
            print('too few samples: the replay finished too fast to watch'
                  + (f' (sampling failed: {watcher.last_error})' if watcher.last_error else ''),
                  file=sys.stderr)
            return 1
        t0 = rows[0]['bag_ns']
        bag_s = np.array([(row['bag_ns'] - t0) / 1e9 for row in rows])
        rss = np.array([row['rss_mb'] for row in rows])
        if not (bag_s >= warmup_s).any():
            print(f'the bag is shorter than the {warmup_s:.0f} s warm-up', file=sys.stderr)
            return 1
        reference, peak_after = rss_after_warmup(bag_s, rss, warmup_s)
        final = float(rss[-1])
        growth = (peak_after - reference) / reference
        timing = record.timing
        print(f'replayed {timing["bag_duration_s"]:.0f} s of bag in {wall_s:.0f} s wall '
              f'({timing["realtime_factor"]:.1f}x real time), {len(rows)} samples')
        print(f'{"bag time":>9} {"RSS MB":>8} {"cells":>7} {"IMU hist":>9} {"poses":>6} '
              f'{"pending":>8} {"learner":>8} {"advisor":>8}')
        marks = np.unique(np.searchsorted(bag_s, np.linspace(0, bag_s[-1], 13)).clip(
            0, len(rows) - 1))
        for index in marks:
            row = rows[index]
            print(f'{bag_s[index]:8.0f}s {row["rss_mb"]:8.1f} {row["cells_in_map"]:7d} '
                  f'{row["imu_history"]:9d} {row["pose_history"]:6d} '
                  f'{row["pending_crossings"]:8d} {row["learner_pending"]:8d} '
                  f'{row["advisor_map_cells"]:8d}')
        maxima = {key: max(row[key] for row in rows) for key in
                  ('cells_in_map', 'imu_history', 'pose_history', 'pending_crossings',
                   'learner_pending', 'advisor_map_cells')}
        verdict = 'PASS' if growth <= TARGET_GROWTH else 'FAIL'
        print(f'RSS at {warmup_s / 60:.0f} min: {reference:.1f} MB, peak after: '
              f'{peak_after:.1f} MB, final: {final:.1f} MB, growth {100 * growth:.1f} % '
              f'(target <= {100 * TARGET_GROWTH:.0f} %: {verdict})')
        print('largest sizes seen: ' + ', '.join(f'{k} {v}' for k, v in maxima.items()))
        print(f'rejected inputs: {record.info["rejected"]}')
        print(f'RESULT soak_bag_minutes {timing["bag_duration_s"] / 60:.1f} min')
        print(f'RESULT soak_rss_after_warmup {reference:.1f} MB')
        print(f'RESULT soak_rss_peak {float(rss.max()):.1f} MB')
        print(f'RESULT soak_rss_growth_after_warmup {100 * growth:.1f} %')
        print(f'RESULT soak_max_cells_in_map {maxima["cells_in_map"]} cells')
        print(f'RESULT soak_max_imu_history {maxima["imu_history"]} samples')
        print(f'RESULT soak_max_advisor_map {maxima["advisor_map_cells"]} cells')
        print(f'RESULT soak_replay_realtime_factor {timing["realtime_factor"]:.1f} x')
        if args.json:
            Path(args.json).write_text(json.dumps({'rows': rows, 'growth': growth}, indent=1))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


def live_soak(bag: Path, warmup_s: float) -> int:
    """The bag played at 1x to `terrain-ssl bringup`; the process's memory every 5 s."""
    import bench_robot_cpu as robot

    rows = []
    next_sample = [0.0]

    def sample(pids, listener):
        if listener.start is None or time.perf_counter() < next_sample[0]:
            return
        next_sample[0] = time.perf_counter() + LIVE_SAMPLE_PERIOD_S
        memory = robot.memory_mb(pids['bringup'])
        rows.append({'bag_s': time.perf_counter() - listener.start[0], 'rss_mb': memory['rss'],
                     'pss_mb': memory['pss']})

    bag_counts = robot.bag_input_counts(bag)
    work = Path(tempfile.mkdtemp(prefix='bench_soak_live_'))
    try:
        from terrain_ssl.replay.bag import Bag
        with Bag(bag) as reader:
            bag_s = (reader.end_ns - reader.start_ns) / 1e9
        result = robot.run_live('bringup', robot.REPO, bag, work, on_tick=sample,
                                max_play_s=bag_s * 1.5 + 120.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    received = robot.received_counts(result['diagnostics'])
    bag_time = np.array([row['bag_s'] for row in rows])
    rss = np.array([row['rss_mb'] for row in rows])
    if not (bag_time >= warmup_s).any():
        print(f'the bag is shorter than the {warmup_s:.0f} s warm-up', file=sys.stderr)
        return 1
    reference, peak_after = rss_after_warmup(bag_time, rss, warmup_s)
    final = float(result['memory_mb']['bringup']['rss'])
    peak_after = max(peak_after, final)
    growth = (peak_after - reference) / reference
    rejected = robot.labeler_rejects(result['diagnostics'])
    print(f'played {bag_s:.0f} s of bag at 1x to terrain-ssl bringup; {len(rows)} samples; '
          f'CPU {result["percent"]["bringup"]:.1f}% of one core; bag inputs {bag_counts}, '
          f'the labeler accepted {received}; rejected {rejected}')
    print(f'{"bag time":>9} {"RSS MB":>8} {"PSS MB":>8}')
    for index in np.unique(np.searchsorted(bag_time, np.linspace(0, bag_time[-1], 13))
                           .clip(0, len(rows) - 1)):
        print(f'{bag_time[index]:8.0f}s {rows[index]["rss_mb"]:8.1f} {rows[index]["pss_mb"]:8.1f}')
    verdict = 'PASS' if final <= TARGET_LIVE_RSS_MB and growth <= TARGET_GROWTH else 'FAIL'
    print(f'RSS at {warmup_s / 60:.0f} min: {reference:.1f} MB, peak after: {peak_after:.1f} MB, '
          f'at the end: {final:.1f} MB, growth {100 * growth:.1f} % (target <= '
          f'{TARGET_LIVE_RSS_MB:.0f} MB and <= {100 * TARGET_GROWTH:.0f} %: {verdict})')
    print(f'RESULT soak_live_bag_minutes {bag_s / 60:.1f} min')
    print(f'RESULT soak_live_rss_after_warmup {reference:.1f} MB')
    print(f'RESULT soak_live_rss_final {final:.1f} MB')
    print(f'RESULT soak_live_rss_growth_after_warmup {100 * growth:.1f} %')
    print(f'RESULT soak_live_cpu {result["percent"]["bringup"]:.1f} % of one core')
    return 0


if __name__ == '__main__':
    sys.exit(main())
