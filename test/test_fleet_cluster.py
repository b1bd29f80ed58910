"""`terrain-ssl evaluate` / `tune` on a real Ray cluster: a head and a second worker node started
on 127.0.0.1 by the test (real raylets, real worker processes, real retries after SIGKILL), on
four short simulated bags (16-beam lidar). Each test stops its own cluster's processes, found by
a marker in their environment (never by name: other Ray instances may share the host).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# Ray clusters authenticate with a token: one for the clusters these tests start and for this
# driver, set before Ray is imported (its token loader reads the environment once).
os.environ['RAY_AUTH_MODE'] = 'token'
os.environ['RAY_AUTH_TOKEN'] = uuid.uuid4().hex + uuid.uuid4().hex
NO_FLEET = 'the fleet extra (requirements-fleet.txt) is not installed'
ray = pytest.importorskip('ray', reason=NO_FLEET)
pytest.importorskip('optuna', reason=NO_FLEET)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name('ray'))
MARKER = 'TERRAIN_SSL_FLEET_TEST_CLUSTER'


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """Four 15 s simulated drives (seeds differ: different terrain), ground truth beside each."""
    from terrain_ssl.sim.bag import simulate_bag

    root = tmp_path_factory.mktemp('fleet_bags')
    return [str(simulate_bag(root / f'drive{seed}', duration_s=15.0, seed=seed, lidar='vlp16',
                             speed='3:6')) for seed in range(4)]


@pytest.fixture(scope='module')
def sequential(bags, tmp_path_factory):
    """What `terrain-ssl replay BAG --out X` writes for each bag, one after the other."""
    from terrain_ssl.cli import main

    root = tmp_path_factory.mktemp('sequential')
    outs = []
    for bag in bags:
        out = root / Path(bag).name
        assert main(['replay', bag, '--out', str(out), '--no-progress']) == 0
        outs.append(out)
    return outs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _marked_pids(marker: str) -> list:
    """Processes of this user whose environment holds MARKER=marker (the cluster's own)."""
    pids = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / 'environ').read_bytes()
        except OSError:
            continue
        if f'{MARKER}={marker}'.encode() in environ.split(b'\0'):
            pids.append(int(entry.name))
    return pids


def _stop(pids, timeout_s: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f'/proc/{pid}').exists() for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def cluster():
    """A Ray head and a second worker node on 127.0.0.1, one CPU each; yields the address."""
    marker = uuid.uuid4().hex
    # Ray's session files go under a short path (unix socket paths are limited to ~100 bytes).
    temp_dir = Path('/tmp') / f'tssl_ray_{marker[:8]}'
    env = dict(os.environ, **{MARKER: marker, 'RAY_USAGE_STATS_ENABLED': '0',
                              'PYTHONPATH': os.pathsep.join([str(REPO)] + [
                                  p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                                  if p])})
    port = _free_port()
    address = f'127.0.0.1:{port}'
    common = ['--node-ip-address', '127.0.0.1', '--num-cpus', '1', '--disable-usage-stats']
    try:
        subprocess.run([RAY, 'start', '--head', '--port', str(port), '--temp-dir',
                        str(temp_dir), '--include-dashboard', 'false'] + common,
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, 'start', '--address', address] + common, env=env, check=True,
                       capture_output=True, timeout=120)
        yield address
    finally:
        _stop(_marked_pids(marker))
        subprocess.run(['rm', '-rf', str(temp_dir)], check=False)


def _metrics(folder) -> dict:
    return json.loads((Path(folder) / 'metrics.json').read_text())


def test_evaluate_on_two_nodes_equals_sequential_replays(cluster, bags, sequential, tmp_path):
    from terrain_ssl.fleet.evaluate import evaluate

    out = tmp_path / 'fleet'
    missing = str(tmp_path / 'no_such_bag')
    outcomes = evaluate(bags + [missing], out, address=cluster, progress=False)
    # A bag that cannot be replayed is a row of the summary, not the end of the others.
    assert outcomes[4].status == 'failed' and 'does not exist' in outcomes[4].error
    assert '\n' not in outcomes[4].error
    outcomes = outcomes[:4]
    assert [o.status for o in outcomes] == ['ok'] * 4, [o.error for o in outcomes]
    for outcome, single in zip(outcomes, sequential):
        assert _metrics(out / 'bags' / outcome.name) == _metrics(single), outcome.name
        assert (out / 'bags' / outcome.name / 'labels.csv').read_bytes() \
            == (single / 'labels.csv').read_bytes()
    # Two worker processes (one CPU per node) shared the bags, each keeping the package loaded
    # from one bag to the next.
    assert len({o.worker['pid'] for o in outcomes}) >= 2
    assert max(o.worker['task_index_in_worker'] for o in outcomes) >= 2
    rows = (out / 'summary.csv').read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith('name,status')
    assert rows[5].startswith('no_such_bag,failed,')
    report = (out / 'report.md').read_text()
    assert 'Pooled over every labeled patch' in report and (out / 'bags_mae.png').stat().st_size
    pooled = sum(o.metrics['labels'] for o in outcomes)
    assert f'**{pooled}** labeled patches' in report


def _running_replay_worker(timeout_s: float = 120.0) -> int:
    """The pid of a Ray worker of this repo busy with a bag (its process title names the task)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path('/proc').iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / 'cmdline').read_bytes().split(b'\0')[0]
                environ = (entry / 'environ').read_bytes()
            except OSError:
                continue
            if title.startswith(b'ray::replay_bag_files') and str(REPO).encode() in environ:
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError('no Ray worker started a replay')


def test_a_worker_killed_mid_run_is_retried_and_the_report_is_complete(cluster, bags,
                                                                      sequential, tmp_path):
    import threading

    from terrain_ssl.fleet.evaluate import evaluate

    out = tmp_path / 'fleet'
    killed = []

    def kill_one_worker():
        pid = _running_replay_worker()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    outcomes = evaluate(bags, out, address=cluster, progress=False, max_retries=2)
    killer.join(timeout=5)
    assert killed, 'the worker was not killed'
    assert [o.status for o in outcomes] == ['ok'] * 4, [o.error for o in outcomes]
    # The killed process ran none of the results: its bag was replayed again, elsewhere.
    assert killed[0] not in {o.worker['pid'] for o in outcomes}
    for outcome, single in zip(outcomes, sequential):
        assert _metrics(out / 'bags' / outcome.name) == _metrics(single), outcome.name
    assert (out / 'summary.csv').read_text().count(',ok,') == 4


def test_tune_writes_parameters_replay_accepts_and_reports_best_vs_default(bags, tmp_path):
    """Four trials on the embedded local Ray; the best trial's parameters file, given to
    `terrain-ssl replay --config`, reproduces the best trial's score."""
    from terrain_ssl.cli import main
    from terrain_ssl.core.metrics import finite_spearman
    from terrain_ssl.fleet.report import read_labels
    from terrain_ssl.fleet.tune import tune

    out = tmp_path / 'tune'
    summary = tune(bags[:1], out, trials=4, objective='truth', workers=2, progress=False)
    assert summary['complete'] == 4 and summary['default']['number'] == 0
    assert summary['best']['value'] <= summary['default']['value']
    report = (out / 'report.md').read_text()
    assert 'default parameters (trial 0)' in report
    assert 'too few for parameter importances' in report
    assert (out / 'study.journal').stat().st_size > 0

    replayed = tmp_path / 'replayed'
    assert main(['replay', bags[0], '--out', str(replayed), '--no-progress',
                 '--config', str(out / 'best_params.yaml')]) == 0
    labels = read_labels(replayed / 'labels.csv')
    score = 1.0 - finite_spearman(labels['predicted'], labels['truth'])
    # labels.csv holds 6 significant digits; ranks are nearly always unchanged by that.
    assert score == pytest.approx(summary['best']['value'], abs=2e-3)
