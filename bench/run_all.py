"""Run every bench/bench_*.py and write one table (markdown + JSON) with the machine's description.

Each benchmark is a script that prints human-readable figures and, for the table, lines

    RESULT <name> <value> <unit>

(name without spaces; value a number, or text without spaces; unit the rest of the line, may be
empty). This runs each script as a subprocess (so one crash does not stop the others), keeps its
whole output, and writes bench/results/latest.md and bench/results/latest.json.

    PYTHONPATH=. .venv/bin/python bench/run_all.py [--quick] [--only latency,soak] [--timeout 3600]

--quick passes --quick to the scripts that accept it (their --help mentions it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / 'results'
RESULT_LINE = re.compile(r'^RESULT\s+(\S+)\s+(\S+)\s*(.*)$')


def parse_results(text: str) -> list:
    """[{name, value (float or str), unit}] from the RESULT lines of a bench's output."""
    rows = []
    for line in text.splitlines():
        match = RESULT_LINE.match(line.strip())
        if not match:
            continue
        name, value, unit = match.groups()
        try:
            value = float(value)
        except ValueError:
            pass
        rows.append({'name': name, 'value': value, 'unit': unit.strip()})
    return rows


def machine_description() -> dict:
    cpu = 'unknown'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemTotal'):
                ram_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    versions = {}
    for module in ('numpy', 'scipy', 'sklearn', 'rclpy'):
        try:
            imported = __import__(module)
            versions[module] = getattr(imported, '__version__', 'installed')
        except ImportError:
            versions[module] = 'missing'
    return {'cpu': cpu, 'cores': os.cpu_count(), 'ram_gb': ram_gb,
            'os': f'{platform.system()} {platform.release()}',
            'python': platform.python_version(), 'versions': versions,
            'ros_distro': os.environ.get('ROS_DISTRO', 'rclpy from PyPI')}


def accepts_quick(script: Path) -> bool:
    return '--quick' in script.read_text()


def run_bench(script: Path, quick: bool, timeout_s: float) -> dict:
    command = [sys.executable, str(script)]
    if quick and accepts_quick(script):
        command.append('--quick')
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        output, returncode = done.stdout, done.returncode
        errors = done.stderr
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) \
            else (expired.stdout or '')
        errors, returncode = f'timed out after {timeout_s:.0f} s', None
    return {'script': script.name, 'command': ' '.join(command[1:]), 'returncode': returncode,
            'wall_s': round(time.perf_counter() - started, 1), 'output': output,
            'stderr_tail': errors[-2000:], 'results': parse_results(output)}


def format_value(value) -> str:
    if isinstance(value, float):
        if value != value:
            return 'n/a'
        if abs(value) >= 1000:
            return f'{value:,.0f}'
        return f'{value:.3g}' if abs(value) < 10 else f'{value:.1f}'
    return str(value)


def markdown(report: dict) -> str:
    machine = report['machine']
    lines = [f'# terrain_ssl benchmarks ({report["date"]})', '',
             f'Machine: {machine["cpu"]}, {machine["cores"]} cores, {machine["ram_gb"]} GB RAM, '
             f'{machine["os"]}; Python {machine["python"]}, '
             + ', '.join(f'{k} {v}' for k, v in machine['versions'].items()) + '.',
             f'Reproduce: `{report["command"]}`' + (' (quick variant)' if report['quick'] else ''),
             '', '| benchmark | figure | value | unit |', '|---|---|---:|---|']
    for bench in report['benchmarks']:
        name = bench['script'].removeprefix('bench_').removesuffix('.py')
        if bench['returncode'] != 0:
            lines.append(f'| {name} | **failed** (exit {bench["returncode"]}) | | |')
        if not bench['results'] and bench['returncode'] == 0:
            lines.append(f'| {name} | (no RESULT lines) | | |')
        for row in bench['results']:
            lines.append(f'| {name} | {row["name"]} | {format_value(row["value"])} | '
                         f'{row["unit"]} |')
    lines += ['', 'Each figure is a `RESULT` line of the script\'s output; the full outputs are '
              'in latest.json.', '']
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='short variants where available')
    parser.add_argument('--only', default='',
                        help='comma-separated names (e.g. latency,soak for bench_latency.py...)')
    parser.add_argument('--timeout', type=float, default=3600.0, help='per benchmark, s')
    parser.add_argument('--out', default=str(RESULTS_DIR), help='directory for latest.md/.json')
    args = parser.parse_args()

    scripts = sorted(BENCH_DIR.glob('bench_*.py'))
    if args.only:
        wanted = {name.strip().removeprefix('bench_').removesuffix('.py')
                  for name in args.only.split(',') if name.strip()}
        scripts = [s for s in scripts if s.stem.removeprefix('bench_') in wanted]
        missing = wanted - {s.stem.removeprefix('bench_') for s in scripts}
        if missing:
            parser.error(f'no bench script for {sorted(missing)}')
    report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'quick': args.quick, 'machine': machine_description(),
              'command': 'PYTHONPATH=. .venv/bin/python bench/run_all.py'
                         + (' --quick' if args.quick else ''),
              'benchmarks': []}
    for script in scripts:
        print(f'== {script.name}', flush=True)
        result = run_bench(script, args.quick, args.timeout)
        print(result['output'], end='' if result['output'].endswith('\n') else '\n')
        if result['returncode'] != 0:
            print(f'!! {script.name} exited {result["returncode"]}: '
                  f'{result["stderr_tail"][-500:]}', flush=True)
        report['benchmarks'].append(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'latest.json').write_text(json.dumps(report, indent=1))
    (out / 'latest.md').write_text(markdown(report))
    print(f'wrote {out / "latest.md"} and {out / "latest.json"}')
    failed = [b['script'] for b in report['benchmarks'] if b['returncode'] != 0]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
