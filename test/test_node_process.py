"""A node process on the robot: math libraries on one thread, and an executor that stops on
Ctrl-C / SIGTERM (rclpy's EventsExecutor does not by itself).

Each case runs a real process: thread pools and signal handlers are process-wide.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import spin_until

REPO = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS',
                    'BLIS_NUM_THREADS', 'VECLIB_MAXIMUM_THREADS', 'NUMEXPR_NUM_THREADS')


def _clean_env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    env.update(extra)
    return env


def _pool_threads(code: str, env: dict) -> dict:
    """Run `code` in a fresh interpreter, then report threadpoolctl's view: api -> threads."""
    script = code + ('\nfrom threadpoolctl import threadpool_info\n'
                     'for pool in threadpool_info():\n'
                     '    print(pool["user_api"], pool["num_threads"])\n')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    pools: dict = {}
    for line in out.split('\n'):
        if line.strip():
            api, threads = line.split()
            pools[api] = max(pools.get(api, 0), int(threads))
    return pools


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason='one CPU: pools have one thread anyway')
def test_pin_math_threads_limits_loaded_and_later_loaded_pools():
    env = _clean_env()
    # Unpinned, numpy's OpenBLAS and scikit-learn's OpenMP start one thread per CPU: the
    # comparison shows that the check below can fail.
    unpinned = _pool_threads('import numpy, sklearn.cluster', env)
    assert unpinned.get('blas', 0) > 1, unpinned
    # numpy (BLAS) is loaded before pinning (the node modules import it), scikit-learn's
    # OpenMP after (loaded on first use in the learner).
    pinned = _pool_threads('import numpy\n'
                           'from terrain_ssl.ros.math_threads import pin_math_threads\n'
                           'pin_math_threads()\n'
                           'import sklearn.cluster', env)
    assert pinned.get('blas') == 1, pinned
    assert all(threads == 1 for threads in pinned.values()), pinned


def test_single_threaded_math_restores_the_pools():
    pools = _pool_threads('import numpy\n'
                          'from threadpoolctl import threadpool_info\n'
                          'from terrain_ssl.ros.math_threads import single_threaded_math\n'
                          'before = max(p["num_threads"] for p in threadpool_info())\n'
                          'with single_threaded_math():\n'
                          '    assert max(p["num_threads"] for p in threadpool_info()) == 1\n'
                          'assert max(p["num_threads"] for p in threadpool_info()) == before',
                          _clean_env())
    assert pools


@pytest.mark.parametrize('kind', ['events', 'single'])
@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM])
def test_node_process_stops_on_signal(ros_context, kind, stop):
    """The console entry point (run_node) with either executor: up, then a clean exit 0."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    name = f'advisor_{kind}_{int(stop)}_{os.getpid()}'  # this process's node, not another's
    process = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from terrain_ssl.ros.advisor_node import main; '
         'sys.exit(main())', '--ros-args', '-r', f'__node:={name}'],
        env=_clean_env(TERRAIN_SSL_EXECUTOR=kind), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    node = Node('stop_probe', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: name in node.get_node_names(),
                          timeout_s=60.0), 'the advisor did not start'
        process.send_signal(stop)
        started = time.monotonic()
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        executor.shutdown()
        node.destroy_node()
    assert process.returncode == 0, output[-2000:]
    assert time.monotonic() - started < 20
    assert 'Traceback' not in output, output[-2000:]


def test_unknown_executor_choice_is_one_line_and_falls_back(monkeypatch, capsys):
    from terrain_ssl.ros.executor import executor_kind

    monkeypatch.setenv('TERRAIN_SSL_EXECUTOR', 'multi')
    assert executor_kind() in ('events', 'single')
    assert capsys.readouterr().err.count('\n') == 1
    monkeypatch.setenv('TERRAIN_SSL_EXECUTOR', 'single')
    assert executor_kind() == 'single'


def test_one_clock_subscription_sets_every_node_clock(ros_context):
    """Bringup's nodes share one /clock subscription; every node's clock still follows /clock."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    from terrain_ssl.ros.conversions import ns_to_stamp
    from terrain_ssl.ros.wiring import share_clock_subscription

    sim_time = [Parameter('use_sim_time', Parameter.Type.BOOL, True)]
    nodes = [Node(f'clock_user_{i}', context=ros_context, parameter_overrides=sim_time)
             for i in range(3)]
    source = Node('clock_source', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    try:
        assert share_clock_subscription(nodes) == 2
        clock_subscriptions = [s for node in nodes for s in node.subscriptions
                               if s.topic_name == '/clock']
        assert len(clock_subscriptions) == 1
        for node in nodes + [source]:
            executor.add_node(node)
        publisher = source.create_publisher(Clock, '/clock', 10)
        stamp_ns = 1_700_000_123_000_000_000
        assert spin_until(executor, lambda: publisher.get_subscription_count() == 1,
                          timeout_s=30.0)

        def all_clocks_set():
            publisher.publish(Clock(clock=ns_to_stamp(stamp_ns)))
            return all(node.get_clock().now().nanoseconds == stamp_ns for node in nodes)
        assert spin_until(executor, all_clocks_set, timeout_s=30.0, step_s=0.05)
    finally:
        executor.shutdown()
        for node in nodes + [source]:
            node.destroy_node()


@pytest.mark.parametrize('kind', ['events', 'single'])
def test_a_signal_between_the_check_and_the_wait_is_a_clean_stop(kind, monkeypatch):
    """SIGTERM can shut the context down after spin_until_shutdown saw it running and before
    spin_once builds its wait set on it (a node printed a traceback and exited 1 on a busy
    machine): that is the requested stop, not an error."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    from terrain_ssl.ros.executor import new_executor, spin_until_shutdown

    context = Context()
    rclpy.init(context=context)
    node = Node('race_probe', context=context)
    executor = new_executor(kind, context=context)
    executor.add_node(node)
    real_ok = rclpy.ok
    checks = []

    def ok_then_signal(context=None):
        checks.append(real_ok(context=context))
        if len(checks) == 1:
            context.try_shutdown()  # the signal lands right after the check said "running"
            return True
        return real_ok(context=context)

    monkeypatch.setattr(rclpy, 'ok', ok_then_signal)
    try:
        spin_until_shutdown(executor, context=context, slice_s=0.05)  # returns, no RCLError
        assert checks[0] is True and not real_ok(context=context)
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
