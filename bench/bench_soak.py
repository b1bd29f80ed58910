"""Soak: a long simulated drive replayed through the three nodes; memory must stay flat.

Simulates a 30-minute drive (VLP-16; `--quick`: 3 minutes), replays it with
terrain_ssl.replay.runner.run_replay (the real nodes, in bag time, as fast as the CPU allows) and
samples, every 0.5 s of wall time, this process's RSS and the sizes of every bounded structure:
the labeler's cell map, IMU and pose histories and pending crossings, the learner's untrained
batch, the advisor's remembered map. Reports RSS growth after the first 5 minutes of bag time
(`--quick`: after the first minute). Target: <= 10 %.

Disk and time: the 30-minute bag is ~13 GB in a temp directory (deleted afterwards) and takes
~15 min to simulate plus the replay on the 2-core development machine.

    PYTHONPATH=. .venv/bin/python bench/bench_soak.py [--quick] [--bag DIR] [--keep DIR]
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
import psutil

TARGET_GROWTH = 0.10


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
        self._process = psutil.Process()

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
            'rss_mb': self._process.memory_info().rss / 1e6,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='3 min drive instead of 30 min')
    parser.add_argument('--bag', help='replay this simulator bag instead of simulating one')
    parser.add_argument('--keep', help='write the simulated bag here and keep it')
    parser.add_argument('--json', help='also write the samples here (JSON)')
    args = parser.parse_args()
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
        after = bag_s >= warmup_s
        if not after.any():
            print(f'the bag is shorter than the {warmup_s:.0f} s warm-up', file=sys.stderr)
            return 1
        reference = float(rss[np.argmax(after)])
        peak_after = float(rss[after].max())
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


if __name__ == '__main__':
    sys.exit(main())
