"""Robot CPU: the three nodes' CPU time and memory at sensor rate, fed in real time over DDS.

As a user would run them: a simulated drive is played by `terrain-ssl play` (1x, /clock) to the
nodes started with use_sim_time, either in one process (`terrain-ssl bringup`) or as the launch
file starts them, three processes from the console entry points with the same parameters file.
Two sensor setups: a 64 x 1024 lidar at 10 Hz (Ouster OS1-64) and 128 x 1024 at 20 Hz, both with
IMU at 200 Hz and odometry at 50 Hz.

Per node process, over the playback (first /clock received -> player exits): CPU time from
/proc/<pid>/stat (user + system, all threads) as % of one core, and RSS at the end. Checks that
nothing was dropped: the labeler's input counts (its /diagnostics) against the bag's, and the
labels received here against a fast replay of the same bag (`terrain_ssl.replay.runner`): the
same count and values. The replay's final flush (labels still waiting for their batch when the bag
ends: a live node never gets the IMU that would complete it) is left out of the comparison.

`--baseline-repo DIR` runs the same nodes from another source tree (e.g. the unchanged main
branch) in the same run, for a before/after comparison.

    PYTHONPATH=. .venv/bin/python bench/bench_robot_cpu.py [--quick] [--modes bringup,separate]
        [--setups os64_10hz,os128_20hz] [--baseline-repo /work/main] [--bag-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / 'bench'))
from isolated_dds import isolate_dds  # noqa: E402

isolate_dds()  # before rclpy loads

import numpy as np  # noqa: E402

# name: (lidar preset, lidar rate Hz, target % of one core for bringup)
SETUPS = {'os64_10hz': ('os64', 10.0, 20.0), 'os128_20hz': ('os128', 20.0, 40.0)}
NODE_MODULES = {'roughness_labeler': 'terrain_ssl.ros.labeler_node',
                'roughness_learner': 'terrain_ssl.ros.learner_node',
                'speed_advisor': 'terrain_ssl.ros.advisor_node'}
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
KB_TO_MB = 1024 / 1e6  # /proc reports kB (KiB)
# host_speed_ms on the development machine's host at its faster (53-56 ms, 2026-12-06; it read up
# to ~200 ms in slow hours). A run's CPU figure x REFERENCE_HOST_MS / its host speed estimates
# what it would have read at that speed (roughly: printed beside the measured figure, never
# instead of it).
REFERENCE_HOST_MS = 54.0


def make_bag(directory: Path, setup: str, duration_s: float) -> Path:
    """The simulated drive for `setup`, reused when `directory` already holds it."""
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.world import WorldConfig

    lidar, rate_hz, _ = SETUPS[setup]
    path = directory / f'{setup}_{duration_s:g}s'
    if (path / 'metadata.yaml').is_file():
        return path
    started = time.perf_counter()
    simulate_bag(path, duration_s=duration_s, seed=3, lidar=lidar, speed='3:7', overwrite=True,
                 world_config=WorldConfig(lidar_overrides=(('rate_hz', rate_hz),)))
    print(f'simulated {setup} ({duration_s:g} s) in {time.perf_counter() - started:.0f} s',
          flush=True)
    return path


def bag_input_counts(bag_path: Path) -> dict:
    """role ('imu', 'points', 'odom') -> messages in the bag."""
    from terrain_ssl.replay.bag import Bag

    with Bag(bag_path) as bag:
        info = bag.topics()
        return {role: info[topic].count for role, topic in bag.resolve_inputs({}).items()}


def cloud_rows(msg) -> np.ndarray:
    """A labeled-patches PointCloud2 -> (n, fields) float64 rows, the label stamp appended."""
    from terrain_ssl.ros.conversions import pointcloud2_to_array, stamp_to_ns

    cloud = pointcloud2_to_array(msg)
    rows = np.column_stack([cloud[name].astype(np.float64) for name in cloud.dtype.names])
    stamp = np.full((rows.shape[0], 1), float(stamp_to_ns(msg.header.stamp)))
    return np.hstack([stamp, rows])


def reference_labels(bag_path: Path, config: Path) -> tuple:
    """The fast replay: (label rows before the final flush, rows of the flush, the labeler's
    accepted input counts by role)."""
    import terrain_ssl.replay.runner as runner
    from terrain_ssl.replay.runner import ReplayOptions, run_replay

    chunks = {'live': [], 'flush': []}
    state = {'part': 'live', 'labeler': None}
    original = runner.create_nodes  # the name the runner looks up

    def create_nodes(*args, **kwargs):
        nodes = original(*args, **kwargs)
        labeler = state['labeler'] = nodes[0]
        labeler.labeled_outlet.connect(lambda msg: chunks[state['part']].append(cloud_rows(msg)))
        flush = labeler.flush_labels

        def flush_labels():
            state['part'] = 'flush'
            flush()
        labeler.flush_labels = flush_labels
        return nodes
    runner.create_nodes = create_nodes
    try:
        run_replay(ReplayOptions(bag=str(bag_path), config=str(config), progress=False,
                                 processes=1))
    finally:
        runner.create_nodes = original
    stats = state['labeler'].labeler.stats
    accepted = {'imu': stats['imu'], 'odom': stats['odometry'], 'points': stats['scans']}
    return tuple(np.concatenate(chunks[part]) if chunks[part] else np.zeros((0, 1))
                 for part in ('live', 'flush')) + (accepted,)


def compare_labels(live: np.ndarray, reference: np.ndarray) -> str:
    """'' when the two label sets are equal (order-free, within float32 rounding), else why."""
    if live.shape[0] != reference.shape[0]:
        return f'{live.shape[0]} labels live, {reference.shape[0]} in the replay'
    if live.shape[0] == 0:
        return ''
    if live.shape[1] != reference.shape[1]:
        return f'{live.shape[1]} fields live, {reference.shape[1]} in the replay'
    a = live[np.lexsort(live.T[::-1])]
    b = reference[np.lexsort(reference.T[::-1])]
    close = np.isclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
    if close.all():
        return ''
    columns = ', '.join(str(i) for i in np.flatnonzero(~close.all(axis=0)))
    return (f'{int((~close.all(axis=1)).sum())} of {a.shape[0]} labels differ in value '
            f'(columns {columns}; 0 is the stamp)')


def node_commands(mode: str, repo: Path, model_path: Path) -> dict:
    """name -> argv: bringup, or the launch file's three nodes from their console entry points
    (`roughness_labeler = terrain_ssl.ros.labeler_node:main` ...), same parameters."""
    config = repo / 'config' / 'terrain_ssl.yaml'
    ros_args = ['-p', 'use_sim_time:=true', '-p', f'model_path:={model_path}']
    if mode == 'bringup':
        return {'bringup': [sys.executable, '-m', 'terrain_ssl.cli', 'bringup', '--config',
                            str(config), '--ros-args'] + ros_args}
    return {name: [sys.executable, '-c', f'import sys; from {module} import main; '
                   'sys.exit(main())', '--ros-args', '--params-file', str(config)] + ros_args
            for name, module in NODE_MODULES.items()}


def host_speed_ms(repeats: int = 5) -> float:
    """CPU ms of a fixed workload like the nodes' (Python calls, small numpy arrays, a 1.5 MB
    copy), best of `repeats`. On a shared virtual machine the same code costs up to ~2.5x more
    CPU time when the host is busy; this figure, taken beside each run, tells such runs apart."""
    buffer = np.zeros(1_500_000, dtype=np.uint8)
    best = float('inf')
    for _ in range(repeats + 1):  # the first warms up
        started = time.process_time()
        total = 0.0
        for index in range(100_000):
            values = {'x': float(index), 'y': 0.5 * index}
            total += values['x'] - values['y']
        for _ in range(2_500):
            matrix = np.random.default_rng(0).normal(size=(64, 3))
            total += float(np.linalg.eigvalsh(matrix.T @ matrix)[0])
        for _ in range(100):
            total += float(bytes(buffer)[0])
        best = min(best, time.process_time() - started)
    return 1e3 * best


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (not its children)."""
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def memory_mb(pid: int) -> dict:
    """RSS, PSS (shared pages split between the processes that map them: sums across
    processes) and the shared-memory part of RSS (Fast DDS's segments), MB (10^6 bytes, as
    the targets and bench_soak's replay figures)."""
    values = {}
    with open(f'/proc/{pid}/smaps_rollup') as rollup:
        for line in rollup:
            key, _, rest = line.partition(':')
            if key in ('Rss', 'Pss'):
                values[key.lower()] = int(rest.split()[0]) * KB_TO_MB
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('RssShmem:'):
                values['shmem'] = int(line.split()[1]) * KB_TO_MB
    return values


class Listener:
    """What a robot's other software would see: labels, /diagnostics, /clock. Takes the CPU
    snapshot of the node processes at the first /clock message."""

    def __init__(self, pids: dict):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import PointCloud2

        from std_msgs.msg import Float32

        from terrain_ssl.ros.qos import LABELS_QOS, RELIABLE_QOS

        self.pids = pids
        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node('robot_cpu_bench', context=self.context)
        self.labels: list = []
        self.diagnostics: dict = {}
        self.start = None  # (wall s, {name: cpu s}) at the first /clock
        self.node.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches',
                                      lambda msg: self.labels.append(cloud_rows(msg)),
                                      LABELS_QOS)
        self.speed_limits = 0  # the advisor's timer output: counts its ticks in sim time
        self.node.create_subscription(Float32, 'terrain_ssl/speed_limit',
                                      self._on_speed_limit, RELIABLE_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        self.node.create_subscription(Clock, '/clock', self._on_clock, 10)
        self.clock_publisher = self.node.create_publisher(Clock, '/clock', 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_clock(self, _msg):
        if self.start is None:
            self.start = (time.perf_counter(),
                          {name: cpu_seconds(pid) for name, pid in self.pids.items()})

    def _on_speed_limit(self, _msg):
        self.speed_limits += 1

    def _on_diagnostics(self, msg):
        for status in msg.status:
            self.diagnostics[status.name.split(':')[0]] = {kv.key: kv.value
                                                          for kv in status.values}

    def nodes_ready(self) -> bool:
        graph = self.node
        return (all(graph.count_subscribers(topic) >= 1
                    for topic in ('/imu/data', '/points', '/odom'))
                and graph.count_publishers('/terrain_ssl/speed_limit') >= 1
                and graph.count_publishers('/terrain_ssl/labeled_patches') >= 1)

    def tick_clock(self, from_ns: int, seconds: float, step_s: float = 0.1) -> None:
        """/clock past the bag's end, so the nodes' diagnostics timers report the final counts."""
        from rosgraph_msgs.msg import Clock

        from terrain_ssl.ros.conversions import ns_to_stamp

        for k in range(1, int(seconds / step_s) + 1):
            self.clock_publisher.publish(Clock(clock=ns_to_stamp(from_ns + int(k * step_s * 1e9))))
            time.sleep(step_s)

    def close(self):
        self._stop.set()
        self._thread.join(5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def stop_processes(processes: dict) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes.values():
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_live(mode: str, repo: Path, bag_path: Path, work: Path, on_tick=None,
             max_play_s: float = 600.0) -> dict:
    """Nodes from `repo` in `mode`, fed by `terrain-ssl play` at 1x; CPU, RSS, labels.

    `on_tick(pids, listener)`, if given, is called every 0.1 s while the bag plays (bench_soak
    samples memory with it)."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    model = work / f'model_{mode}_{time.monotonic_ns()}.npz'
    log = open(work / f'nodes_{mode}.log', 'ab')
    processes = {name: subprocess.Popen(argv, env=env, cwd=repo, stdout=log, stderr=log,
                                        start_new_session=True)
                 for name, argv in node_commands(mode, repo, model).items()}
    listener = Listener({name: p.pid for name, p in processes.items()})
    player = None
    try:
        deadline = time.monotonic() + 120.0
        while not listener.nodes_ready():
            if time.monotonic() > deadline or any(p.poll() is not None
                                                  for p in processes.values()):
                raise RuntimeError(f'nodes ({mode}) did not come up; see {log.name}')
            time.sleep(0.2)
        time.sleep(1.0)
        # The player from this tree for both repos: the feed is the same, only the nodes differ.
        player = subprocess.Popen([sys.executable, '-m', 'terrain_ssl.cli', 'play',
                                   str(bag_path)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                  cwd=REPO, stdout=log, stderr=subprocess.DEVNULL)
        player_cpu_s = 0.0  # the feed's own cost, for context (read just before it exits)
        player_deadline = time.monotonic() + max_play_s
        while player.poll() is None and time.monotonic() < player_deadline:
            try:
                player_cpu_s = cpu_seconds(player.pid)
            except (OSError, IndexError):  # exiting
                pass
            if on_tick is not None:
                on_tick({name: p.pid for name, p in processes.items()}, listener)
            time.sleep(0.1)
        if player.poll() is None:
            raise RuntimeError(f'the player did not finish within {max_play_s:.0f} s')
        end_wall = time.perf_counter()
        end_cpu = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        end_memory = {name: memory_mb(p.pid) for name, p in processes.items()}
        speed_limits = listener.speed_limits
        if listener.start is None:
            raise RuntimeError('no /clock received from the player')
        from terrain_ssl.replay.bag import Bag
        with Bag(bag_path) as bag:
            end_ns = bag.end_ns
        listener.tick_clock(end_ns, 2.5)
        time.sleep(0.5)
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        stop_processes(processes)
        listener.close()
        log.close()
    start_wall, start_cpu = listener.start
    wall_s = end_wall - start_wall
    percent = {name: 100.0 * (end_cpu[name] - start_cpu[name]) / wall_s for name in end_cpu}
    labels = np.concatenate(listener.labels) if listener.labels else np.zeros((0, 1))
    return {'wall_s': wall_s, 'percent': percent, 'memory_mb': end_memory, 'labels': labels,
            'diagnostics': listener.diagnostics, 'speed_limits': speed_limits,
            'player_percent': 100.0 * player_cpu_s / wall_s}


def labeler_rejects(diagnostics: dict) -> dict:
    """reason -> count of the inputs the labeler refused (its last /diagnostics)."""
    values = diagnostics.get('roughness_labeler', {})
    return {key[len('rejected_'):]: int(value) for key, value in values.items()
            if key.startswith('rejected_')}


def received_counts(diagnostics: dict) -> dict:
    """The labeler's input counts from its last /diagnostics (role -> count), if it sent them."""
    values = diagnostics.get('roughness_labeler', {})
    keys = {'imu': 'imu_accepted', 'odom': 'odometry_accepted', 'points': 'scans_accepted'}
    return {role: int(values[key]) for role, key in keys.items() if key in values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='12 s drives instead of 30 s')
    parser.add_argument('--modes', default='bringup,separate')
    parser.add_argument('--setups', default=','.join(SETUPS))
    parser.add_argument('--baseline-repo', help='also run the nodes from this source tree')
    parser.add_argument('--bag-dir', help='keep / reuse the simulated bags here')
    parser.add_argument('--json', help='write the figures here')
    args = parser.parse_args()
    duration_s = 12.0 if args.quick else 30.0
    modes = args.modes.split(',')
    setups = args.setups.split(',')
    repos = [('after', REPO)]
    if args.baseline_repo:
        repos.insert(0, ('before', Path(args.baseline_repo).resolve()))

    temp = Path(tempfile.mkdtemp(prefix='bench_robot_cpu_'))
    bag_dir = Path(args.bag_dir) if args.bag_dir else temp
    bag_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for setup in setups:
            bag_path = make_bag(bag_dir, setup, duration_s)
            bag_counts = bag_input_counts(bag_path)
            reference, flushed, replay_accepted = reference_labels(
                bag_path, REPO / 'config' / 'terrain_ssl.yaml')
            print(f'{setup}: bag {bag_counts}; fast replay accepted {replay_accepted}, '
                  f'{reference.shape[0]} labels (+{flushed.shape[0]} in its final flush)',
                  flush=True)
            for mode in modes:
                for tag, repo in repos:
                    host_ms = host_speed_ms()
                    r = run_live(mode, repo, bag_path, temp)
                    received = received_counts(r['diagnostics'])
                    # Against what the replay accepted: both refuse the same few inputs
                    # (e.g. a scan before the first odometry).
                    dropped = {role: replay_accepted[role] - n for role, n in received.items()
                               if n != replay_accepted[role]}
                    label_problem = compare_labels(r['labels'], reference)
                    row = {'setup': setup, 'mode': mode, 'code': tag, 'wall_s': r['wall_s'],
                           'percent': r['percent'], 'total_percent': sum(r['percent'].values()),
                           'memory_mb': r['memory_mb'],
                           'rejected': labeler_rejects(r['diagnostics']),
                           'total_rss_mb': sum(m['rss'] for m in r['memory_mb'].values()),
                           'total_pss_mb': sum(m['pss'] for m in r['memory_mb'].values()),
                           'labels': int(r['labels'].shape[0]),
                           'speed_limits': r['speed_limits'],
                           'player_percent': r['player_percent'],
                           'reference_labels': int(reference.shape[0]),
                           'labels_equal': not label_problem, 'label_problem': label_problem,
                           'received': received, 'dropped': dropped,
                           'target_percent': SETUPS[setup][2], 'host_ms': host_ms}
                    rows.append(row)
                    print_row(row)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def print_row(row: dict) -> None:
    per_node = ', '.join(f'{name} {pct:.1f}%' for name, pct in row['percent'].items())
    inputs = ('inputs: all received' if row['received'] and not row['dropped'] else
              f'inputs dropped: {row["dropped"]}' if row['received'] else
              'inputs: not reported by this labeler')
    labels = ('labels equal to the fast replay' if row['labels_equal']
              else f'labels: {row["label_problem"]}')
    print(f'{row["setup"]:<11} {row["mode"]:<9} {row["code"]:<6} total '
          f'{row["total_percent"]:5.1f}% of one core ({per_node}); RSS '
          f'{row["total_rss_mb"]:.0f} MB (PSS {row["total_pss_mb"]:.0f} MB); '
          f'{row["labels"]} labels; {row["speed_limits"]} '
          f'speed limits; {inputs} (labeler rejected {row["rejected"]}); {labels}; the player '
          f'took {row["player_percent"]:.0f}% of one core (start-up included); host speed '
          f'{row["host_ms"]:.0f} ms (total at the reference host speed ~'
          f'{at_reference_speed(row):.1f}%)',
          flush=True)


def at_reference_speed(row: dict) -> float:
    """The run's total CPU % scaled to REFERENCE_HOST_MS (see there)."""
    return row['total_percent'] * REFERENCE_HOST_MS / row['host_ms']


def print_summary(rows: list) -> None:
    print('\n| setup | mode | code | CPU % of one core (total) | per node | RSS (PSS) MB '
          f'| labels | host speed ms | total at {REFERENCE_HOST_MS:.0f} ms host speed (est.) |')
    print('|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        per_node = ', '.join(f'{name.split("_")[-1]} {pct:.1f}'
                             for name, pct in row['percent'].items())
        ok = 'same as replay' if row['labels_equal'] else row['label_problem']
        print(f'| {row["setup"]} | {row["mode"]} | {row["code"]} | '
              f'{row["total_percent"]:.1f} | {per_node} | {row["total_rss_mb"]:.0f} '
              f'({row["total_pss_mb"]:.0f}) | '
              f'{row["labels"]} ({ok}) | {row["host_ms"]:.0f} | '
              f'{at_reference_speed(row):.1f} |')
    for row in rows:
        name = f'robot_cpu_{row["setup"]}_{row["mode"]}_{row["code"]}'
        print(f'RESULT {name}_total {row["total_percent"]:.1f} % of one core')
        print(f'RESULT {name}_rss {row["total_rss_mb"]:.0f} MB')
        print(f'RESULT {name}_pss {row["total_pss_mb"]:.0f} MB')
        print(f'RESULT {name}_host_speed {row["host_ms"]:.0f} ms')
        if row['mode'] == 'bringup' and row['code'] == 'after':
            verdict = 'PASS' if row['total_percent'] <= row['target_percent'] else 'FAIL'
            # A run that lost inputs did less work than the drive asks for: its CPU figure
            # is a lower bound (the machine was too busy for real time).
            if row['dropped'] or not row['received'] or not row['labels_equal']:
                verdict += (f' but NOT VALID: inputs lost {row["dropped"]}'
                            + ('' if row['labels_equal'] else f', {row["label_problem"]}'))
            print(f'target {row["setup"]} bringup <= {row["target_percent"]:.0f}% of one core: '
                  f'{row["total_percent"]:.1f}% {verdict} (host speed {row["host_ms"]:.0f} ms; '
                  f'~{at_reference_speed(row):.1f}% at {REFERENCE_HOST_MS:.0f} ms)')


if __name__ == '__main__':
    sys.exit(main())
