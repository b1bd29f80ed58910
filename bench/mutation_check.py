"""Mutation check: plant each named regression in a copy of the repository and run the tests
that should catch it; every one must make them fail.

    PYTHONPATH=. .venv/bin/python bench/mutation_check.py [--only NAME ...] [--list]

Each mutation replaces one exact piece of text (found in the named file, or, when that file no
longer holds it, in the one module under terrain_ssl/ that does) in a fresh copy of the
tree (.venv and .git left out, the built C extension copied or built there), then runs the
mutation's tests there with this Python (-x, stop at the first failure). caught = the tests
failed; missed = they passed; stale = the text is gone from the code (update the mutation);
error = pytest could not run them. The unmutated tests run first in a copy of their own: they
must pass, or nothing is judged. Exit status 0 only when every mutation is caught. Not part of
`make test` (it runs the suite's slowest tests once per mutation).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'bench' / 'results' / 'mutation_check.md'


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str                      # the regression, in words
    path: str                      # where the text lives (searched elsewhere if moved)
    edits: tuple                   # ((old text, new text), ...), each old text unique
    tests: tuple                   # pytest node ids or files


MUTATIONS = [
    Mutation('label_leakage', 'the learner learns each batch before scoring it',
             'terrain_ssl/ros/learner_node.py',
             (('        self.score_pending()\n        if not self._pending:\n            return\n',
               '        if not self._pending:\n            self.score_pending()\n'
               '            return\n'),
              ('        self.model.partial_fit(X, y)\n        baseline_column',
               '        self.model.partial_fit(X, y)\n        self.score_pending()\n'
               '        baseline_column')),
             ('test/test_prequential_honesty.py',)),
    Mutation('advisor_drops_uncertainty', 'the advisor node discards the uncertainty channel',
             'terrain_ssl/ros/advisor_node.py',
             (("RoughnessMap(xy, points['roughness'], points['uncertainty'],",
               "RoughnessMap(xy, points['roughness'], np.zeros(len(points)),"),),
             ('test/test_advisor_safety.py', 'test/test_advisor_node.py')),
    Mutation('advisor_fails_open_bad_map', 'a rejected map leaves the last good map in use',
             'terrain_ssl/core/advisor.py',
             (('if self.map_bad or self._stale(self.map_time_ns, now_ns):',
               'if self._stale(self.map_time_ns, now_ns):'),),
             ('test/test_advisor_safety.py', 'test/test_reliability_advisor.py')),
    Mutation('advisor_skips_bad_cells', 'NaN / negative cells are skipped, the rest of the '
             'map used', 'terrain_ssl/ros/advisor_node.py',
             (('        if not usable.all():\n', '        if False:\n'),),
             ('test/test_advisor_safety.py', 'test/test_reliability_advisor.py')),
    Mutation('advisor_fails_open_bad_odometry', 'bad odometry leaves the last good pose in use',
             'terrain_ssl/ros/advisor_node.py',
             (('            self.advisor.reject_state()', '            pass'),),
             ('test/test_advisor_safety.py', 'test/test_reliability_advisor.py')),
    Mutation('closed_loop_at_v_max', 'the closed loop drives at v_max, not at the advice',
             'terrain_ssl/sim/closed_loop.py',
             (('                command = stack.speed_limit\n',
               '                command = stack.advisor.advisor.config.v_max_mps\n'),),
             ('test/test_closed_loop_targets.py',)),
    Mutation('replay_count_check_off', 'the replay no longer compares read and recorded counts',
             'terrain_ssl/replay/bag.py',
             (('        return {topic: (self.expected[topic], self.read.get(topic, 0))',
               '        return {}\n        return {topic: (self.expected[topic], '
               'self.read.get(topic, 0))'),),
             ('test/test_bag_reading.py::'
              'test_a_bag_that_reads_short_is_a_loss_in_full_and_in_a_window',)),
    Mutation('cloud_with_trailing_bytes', 'a cloud with more data than it declares is read',
             'terrain_ssl/ros/conversions.py',
             (('    if len(data) != expected:\n', '    if len(data) < expected:\n'),),
             ('test/test_reliability_labeler.py::'
              'test_fuzzed_clouds_are_counted_and_labeling_goes_on',
              'test/test_reliability_learner.py::'
              'test_fuzzed_patch_clouds_never_raise_and_are_counted')),
    Mutation('speed_exponent_1_2', 'labels under-normalised for speed (shock / v^1.2): the '
             'tightened speed-normalisation ratio', 'terrain_ssl/core/labeler.py',
             (('    label_speed_exponent: float = 1.0\n',
               '    label_speed_exponent: float = 1.2\n'),),
             ('test/test_labeler_node.py::test_speed_normalisation_3_vs_6_mps',)),
    Mutation('vibration_band_to_4_hz', 'the shock band ends at 4 Hz, not 30 (labels lose the '
             'chassis band): the tightened label Spearman', 'terrain_ssl/core/labeler.py',
             (('    vibration_band_high_hz: float = 30.0 ',
               '    vibration_band_high_hz: float = 4.0 '),),
             ('test/test_labeler_node.py::test_labels_rank_like_the_true_roughness',)),
    Mutation('learner_barely_learns', 'the learner steps 100x smaller (the shipped '
             'configuration): the quality targets', 'config/terrain_ssl.yaml',
             (('    learning_rate: 0.02\n', '    learning_rate: 0.0002\n'),),
             ('test/test_learning_quality.py',)),
]


def copy_tree(destination: Path) -> None:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
        '.venv', '.git', '__pycache__', '*.egg-info', 'build', 'demo_out', '.pytest_cache',
        'bench_out*', 'results'))
    core = destination / 'terrain_ssl' / 'core'
    if not list(core.glob('_kernels*.so')) and (core / '_kernels.c').exists():
        subprocess.run([sys.executable, 'setup.py', 'build_ext', '--inplace', '-q'],
                       cwd=destination, check=True, capture_output=True)


def apply(mutation: Mutation, root: Path) -> str:
    """Edit the copy; '' when applied, else why not."""
    for old, new in mutation.edits:
        candidates = [root / mutation.path] + sorted((root / 'terrain_ssl').rglob('*.py'))
        for path in candidates:
            text = path.read_text() if path.exists() else ''
            if text.count(old) == 1:
                path.write_text(text.replace(old, new))
                break
            if text.count(old) > 1:
                return f'text found {text.count(old)} times in {path.relative_to(root)}'
        else:
            return f'text not found: {old.strip()[:60]!r}'
    return ''


def run_tests(root: Path, tests, timeout_s: float) -> tuple:
    """(pytest exit code or None on timeout, seconds, last output line)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p',
                               'no:cacheprovider', *tests], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, 'timeout'
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, time.perf_counter() - start, lines[-1] if lines else ''


def check(mutation: Mutation, work: Path, timeout_s: float) -> tuple:
    root = work / mutation.name
    copy_tree(root)
    problem = apply(mutation, root)
    if problem:
        return 'stale', 0.0, problem
    code, seconds, last = run_tests(root, mutation.tests, timeout_s)
    status = {0: 'missed', 1: 'caught'}.get(code, 'error')
    return status, seconds, last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', nargs='+', metavar='NAME', help='run only these mutations')
    parser.add_argument('--list', action='store_true', help='list the mutations and exit')
    parser.add_argument('--skip-baseline', action='store_true',
                        help='do not run the unmutated tests first')
    parser.add_argument('--timeout', type=float, default=1200.0,
                        help='seconds per test run before it counts as an error')
    args = parser.parse_args(argv)
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not selected:
        for mutation in MUTATIONS:
            print(f'{mutation.name:34s} {mutation.what}  [{", ".join(mutation.tests)}]')
        return 0 if args.list else 2
    rows = []
    with tempfile.TemporaryDirectory(prefix='terrain_ssl_mutants_') as tmp:
        work = Path(tmp)
        if not args.skip_baseline:
            tests = list(dict.fromkeys(t for m in selected for t in m.tests))
            copy_tree(work / 'unmutated')
            code, seconds, last = run_tests(work / 'unmutated', tests, args.timeout)
            print(f'unmutated: {last} ({seconds:.0f} s)', flush=True)
            if code != 0:
                print('the unmutated tests do not pass: nothing to judge', file=sys.stderr)
                return 2
            shutil.rmtree(work / 'unmutated')
        for mutation in selected:
            status, seconds, last = check(mutation, work, args.timeout)
            rows.append((mutation, status, seconds, last))
            print(f'{mutation.name}: {status} ({seconds:.0f} s) {last}', flush=True)
            shutil.rmtree(work / mutation.name, ignore_errors=True)
    table = ['| mutation | regression | tests | result | s |', '|---|---|---|---|---|']
    for mutation, status, seconds, last in rows:
        tests = ', '.join(t.replace('test/', '').split('::')[0] for t in mutation.tests)
        table.append(f'| {mutation.name} | {mutation.what} | {tests} | {status} | '
                     f'{seconds:.0f} |')
    caught = sum(status == 'caught' for _, status, _, _ in rows)
    print('\n'.join(table))
    print(f'RESULT mutations_caught {caught} of {len(rows)}')
    if not args.only:
        RESULTS.write_text('# bench/mutation_check.py\n\n' + '\n'.join(table)
                           + f'\n\nRESULT mutations_caught {caught} of {len(rows)}\n')
    return 0 if caught == len(rows) else 1


if __name__ == '__main__':
    sys.exit(main())
