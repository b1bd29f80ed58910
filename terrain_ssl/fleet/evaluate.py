"""`terrain-ssl evaluate`: many bags replayed on Ray, one task per bag, one summary and report.

DIR/bags/<name>/ holds what `terrain-ssl replay BAG --out DIR/bags/<name>` writes (the same
metrics.json); DIR/summary.csv has one row per bag, failed ones included; DIR/report.md pools
the figures and compares the bags in one plot.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from terrain_ssl.fleet.cluster import (DEFAULT_MAX_RETRIES, ProgressBar, remote, ray_session,
                                       run_bounded)
from terrain_ssl.fleet.jobs import ReplaySettings, replay_bag_files

SUMMARY_COLUMNS = ('name', 'status', 'bag', 'bag_s', 'labels', 'prequential_mae',
                   'baseline_mae', 'prequential_spearman', 'baseline_spearman',
                   'truth_spearman', 'baseline_truth_spearman', 'replay_s', 'task_s',
                   'realtime_factor', 'worker_pid', 'worker_host', 'task_index_in_worker',
                   'worker_max_rss_mb', 'error')


@dataclass
class BagOutcome:
    """One bag's row of the summary."""

    name: str
    bag: str
    status: str = 'failed'
    error: str = ''
    bag_s: Optional[float] = None
    metrics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    worker: dict = field(default_factory=dict)

    def row(self) -> dict:
        m = self.metrics
        p, b = m.get('prequential', {}), m.get('baseline_height_spread', {})
        g = m.get('ground_truth', {})
        return {'name': self.name, 'status': self.status, 'bag': self.bag,
                'bag_s': self.bag_s, 'labels': m.get('labels'),
                'prequential_mae': p.get('mae'), 'baseline_mae': b.get('mae'),
                'prequential_spearman': p.get('spearman'),
                'baseline_spearman': b.get('spearman'),
                'truth_spearman': g.get('spearman_prediction_vs_truth'),
                'baseline_truth_spearman': g.get('spearman_baseline_vs_truth'),
                'replay_s': self.timing.get('wall_s'), 'task_s': self.worker.get('task_s'),
                'realtime_factor': self.timing.get('realtime_factor'),
                'worker_pid': self.worker.get('pid'), 'worker_host': self.worker.get('host'),
                'task_index_in_worker': self.worker.get('task_index_in_worker'),
                'worker_max_rss_mb': self.worker.get('worker_max_rss_mb'), 'error': self.error}


def bag_names(bags) -> list:
    """A folder name per bag: its own name (without .mcap/.db3/.bag), made unique."""
    names, seen = [], {}
    for bag in bags:
        path = Path(bag)
        stem = path.name if path.is_dir() else path.stem
        stem = stem or 'bag'
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f'{stem}-{seen[stem]}')
    return names


def bag_duration_s(bag: str) -> Optional[float]:
    """The bag's length from its index (for the progress bar), or None if it cannot be read."""
    from terrain_ssl.replay.bag import Bag, BagError

    try:
        with Bag(Path(bag)) as opened:
            return (opened.end_ns - opened.start_ns) / 1e9
    except (BagError, OSError, ValueError):
        return None


def evaluate(bags, out_dir, settings: ReplaySettings = ReplaySettings(),
             workers: Optional[int] = None, address: Optional[str] = None,
             max_retries: int = DEFAULT_MAX_RETRIES, progress: bool = True) -> list:
    """Replay every bag on Ray and write DIR/bags/*, summary.csv and report.md.

    Bags are passed to the workers as absolute paths (a path every node sees). Returns the
    BagOutcome list in the order of `bags`.
    """
    from terrain_ssl.fleet.report import write_evaluation_report

    out_dir = Path(out_dir)
    paths = [os.path.abspath(bag) for bag in bags]
    outcomes = [BagOutcome(name, path) for name, path in zip(bag_names(paths), paths)]
    for outcome in outcomes:
        outcome.bag_s = bag_duration_s(outcome.bag)
    bar = ProgressBar(len(outcomes), sum(o.bag_s or 0.0 for o in outcomes), progress)

    def on_result(outcome: BagOutcome, result: Optional[dict], error: str) -> None:
        _record(outcome, result, error, out_dir / 'bags' / outcome.name)
        bar.update(outcome.bag_s or 0.0, outcome.status != 'ok')

    with ray_session(address, workers) as limit:
        task = remote(replay_bag_files, max_retries)
        if progress:
            bar.draw()
        run_bounded(lambda outcome: task.remote(outcome.bag, settings), outcomes, limit,
                    on_result)
    bar.close()
    write_summary(outcomes, out_dir / 'summary.csv')
    write_evaluation_report(outcomes, out_dir)
    return outcomes


def _record(outcome: BagOutcome, result: Optional[dict], error: str, bag_dir: Path) -> None:
    """Fill `outcome` from a task's result and write its files into `bag_dir`."""
    if result is None:
        outcome.error = error or 'the task returned nothing'
        return
    outcome.worker = result.get('worker', {})
    outcome.timing = result.get('timing', {})
    if result['status'] != 'ok':
        outcome.error = result.get('error', '')
        return
    bag_dir.mkdir(parents=True, exist_ok=True)
    for name, data in result['files'].items():
        (bag_dir / Path(name).name).write_bytes(data)
    outcome.metrics = json.loads(result['files']['metrics.json'])
    outcome.bag_s = outcome.timing.get('bag_duration_s', outcome.bag_s)
    outcome.status = 'ok'


def write_summary(outcomes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow({key: _cell(value) for key, value in outcome.row().items()})


def _cell(value):
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.6g}'
    return value
