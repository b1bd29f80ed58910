"""Evaluation report of one replay: metrics.json, labels.csv, PNG plots and report.md.

Pure numpy / matplotlib (no rclpy): the replay hands over plain arrays.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from terrain_ssl.core.metrics import finite_spearman


@dataclass
class ReplayRecord:
    """What a replay observed. Sample arrays are aligned, one entry per labeled patch,
    in the order the learner saw them (predict first, then learn)."""

    samples: dict = field(default_factory=dict)   # t_s, x, y, roughness, predicted, uncertainty,
    #                                               baseline, speed, roughness_class[, truth]
    speed: dict = field(default_factory=dict)     # t_s, x, y, speed_limit, speed (m/s)
    final_map: dict = field(default_factory=dict)  # x, y, roughness, uncertainty
    info: dict = field(default_factory=dict)      # bag, counts, rejects (deterministic)
    timing: dict = field(default_factory=dict)    # wall_s, realtime_factor, messages_per_s


def _mae(predicted, measured) -> float:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    ok = np.isfinite(predicted) & np.isfinite(measured)
    return float(np.mean(np.abs(predicted[ok] - measured[ok]))) if ok.any() else float('nan')


def compute_metrics(record: ReplayRecord) -> dict:
    s = record.samples
    n = len(s.get('roughness', ()))
    metrics: dict = {'labels': int(n)}
    if n == 0:
        metrics['note'] = 'no labeled samples: check speed, topics and extrinsics'
        return metrics | {'info': record.info}
    measured = np.asarray(s['roughness'], float)
    predicted = np.asarray(s['predicted'], float)
    baseline = np.asarray(s['baseline'], float)
    quarter, half = slice(0, max(n // 4, 1)), slice(n // 2, n)
    metrics['prequential'] = {
        'mae': _mae(predicted, measured),
        'spearman': finite_spearman(predicted, measured),
        'mae_first_quarter': _mae(predicted[quarter], measured[quarter]),
        'mae_second_half': _mae(predicted[half], measured[half]),
        'spearman_second_half': finite_spearman(predicted[half], measured[half]),
    }
    metrics['baseline_height_spread'] = {
        'mae': _mae(baseline, measured),
        'spearman': finite_spearman(baseline, measured),
        'mae_second_half': _mae(baseline[half], measured[half]),
        'spearman_second_half': finite_spearman(baseline[half], measured[half]),
    }
    classes = np.asarray(s['roughness_class'], int)
    metrics['label_classes'] = {name: int((classes == value).sum())
                                for value, name in enumerate(('smooth', 'moderate', 'rough'))}
    t = np.asarray(s['t_s'], float)
    if n > 1 and np.ptp(t) > 0:
        metrics['labels_per_s'] = float(n / np.ptp(t))
    if 'truth' in s:
        truth = np.asarray(s['truth'], float)
        metrics['ground_truth'] = {
            'spearman_label_vs_truth': finite_spearman(measured, truth),
            'spearman_prediction_vs_truth': finite_spearman(predicted, truth),
            'spearman_prediction_vs_truth_second_half': finite_spearman(predicted[half],
                                                                        truth[half]),
            'spearman_baseline_vs_truth': finite_spearman(baseline, truth),
        }
    if record.speed.get('speed_limit') is not None and len(record.speed['speed_limit']):
        limit = np.asarray(record.speed['speed_limit'], float)
        metrics['speed_limit'] = {'mean_mps': float(np.mean(limit)),
                                  'min_mps': float(np.min(limit)),
                                  'max_mps': float(np.max(limit))}
    metrics['info'] = record.info
    return metrics


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_labels_csv(record: ReplayRecord, path: Path) -> None:
    columns = [c for c in ('t_s', 'x', 'y', 'roughness', 'roughness_class', 'predicted',
                           'uncertainty', 'baseline', 'speed', 'truth') if c in record.samples]
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        rows = zip(*(np.asarray(record.samples[c]) for c in columns))
        for row in rows:
            writer.writerow([f'{v:.6g}' if isinstance(v, (float, np.floating)) else int(v)
                             for v in row])


def _rolling(values, window):
    values = np.asarray(values, float)
    if len(values) < window:
        window = max(len(values), 1)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode='valid')


def write_plots(record: ReplayRecord, out_dir: Path) -> list:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    s, written = record.samples, []
    n = len(s.get('roughness', ()))
    if n:
        measured = np.asarray(s['roughness'], float)
        error = np.abs(np.asarray(s['predicted'], float) - measured)
        base_error = np.abs(np.asarray(s['baseline'], float) - measured)
        window = max(20, n // 20)
        fig, ax = plt.subplots(figsize=(7, 4))
        x_axis = np.arange(len(_rolling(error, window))) + window
        ax.plot(x_axis, _rolling(error, window), label='terrain_ssl (predict, then learn)')
        ax.plot(x_axis, _rolling(base_error, window), label='baseline: height spread alone',
                linestyle='--')
        ax.set_xlabel('labeled patches seen')
        ax.set_ylabel(f'prequential MAE, rolling {window} [(m/s^2)/(m/s)]')
        ax.set_title('Learning curve')
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / 'learning_curve.png'))

        fig, ax = plt.subplots(figsize=(5, 5))
        half = slice(n // 2, n)
        ax.scatter(measured[half], np.asarray(s['predicted'], float)[half], s=4, alpha=0.4)
        top = float(np.nanpercentile(measured, 99.5)) if n else 1.0
        ax.plot([0, top], [0, top], color='k', linewidth=0.8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel('measured roughness (label) [(m/s^2)/(m/s)]')
        ax.set_ylabel('predicted before crossing')
        ax.set_title('Predicted vs measured, second half')
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / 'predicted_vs_measured.png'))

    m = record.final_map
    if len(m.get('x', ())) or n:
        fig, ax = plt.subplots(figsize=(7, 6))
        if len(m.get('x', ())):
            points = ax.scatter(m['x'], m['y'], c=m['roughness'], s=3, cmap='inferno',
                                vmin=0, vmax=float(np.nanpercentile(m['roughness'], 99)))
            fig.colorbar(points, ax=ax, label='predicted roughness [(m/s^2)/(m/s)]')
        if n:
            ax.plot(s['x'], s['y'], ',', color='tab:cyan', alpha=0.5, label='labeled patches')
        ax.set_aspect('equal')
        ax.set_xlabel('x [m] (odom)')
        ax.set_ylabel('y [m] (odom)')
        ax.set_title('Roughness map of the route (top-down)')
        written.append(_save(fig, out_dir / 'roughness_map.png'))

    sp = record.speed
    if len(sp.get('t_s', ())):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(sp['t_s'], sp['speed_limit'], label='recommended speed limit')
        if 'speed' in sp:
            ax.plot(sp['t_s'], sp['speed'], label='driven speed', alpha=0.7)
        ax.set_xlabel('time [s]')
        ax.set_ylabel('speed [m/s]')
        ax.set_title('Speed recommendation along the drive')
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / 'speed.png'))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def prepare_output_folder(out_dir) -> Optional[str]:
    """Create `out_dir` if need be; why it cannot take the outputs, or None. Checked before a
    replay starts: a folder that cannot be made or written to is refused in one line up front,
    rather than after the whole run, with nothing saved."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f'cannot create the output folder {out_dir}: {error.strerror or error}'
    if not os.access(out_dir, os.W_OK | os.X_OK):
        return f'cannot write to the output folder {out_dir}'
    return None


def write_report(record: ReplayRecord, out_dir) -> dict:
    """Write every output into `out_dir`; return the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _json_safe(compute_metrics(record))
    # metrics.json holds only what the bag and the code determine, so two replays of the same
    # bag give the same file; wall-clock figures go to timing.json.
    (out_dir / 'metrics.json').write_text(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
    (out_dir / 'timing.json').write_text(
        json.dumps(_json_safe(record.timing), indent=2, sort_keys=True) + '\n')
    write_labels_csv(record, out_dir / 'labels.csv')
    plots = write_plots(record, out_dir)

    lines = ['# terrain_ssl replay report', '']
    info = record.info
    if info.get('bag'):
        lines += [f"Bag: `{info['bag']}`  ",
                  f"Bag duration: {_fmt(info.get('bag_duration_s'), 1)} s,"
                  f" replayed in {_fmt(record.timing.get('wall_s'), 1)} s"
                  f" ({_fmt(record.timing.get('realtime_factor'), 1)}x real time)", '']
    lines += [f"Labeled patches: **{metrics['labels']}**", '']
    skipped = _undecodable_in(info)
    if skipped:
        lines += [f'**Warning:** {skipped}', '']
    if info.get('topics'):
        inputs = ', '.join(f'{role} `{topic}`' for role, topic in sorted(info['topics'].items()))
        lines += [f'Inputs: {inputs}.  ']
        unused = info.get('topics_not_replayed') or {}
        lines += ['Not replayed (not inputs of the pipeline): '
                  + (', '.join(f'`{topic}` ({msgtype})' for topic, msgtype in unused.items())
                     if unused else 'none') + '.', '']
    if 'prequential' in metrics:
        p, b = metrics['prequential'], metrics['baseline_height_spread']
        lines += ['| quality (predict, then learn) | terrain_ssl | baseline: height spread |',
                  '|---|---|---|',
                  f"| prequential MAE, all | {_fmt(p['mae'])} | {_fmt(b['mae'])} |",
                  f"| prequential MAE, second half | {_fmt(p['mae_second_half'])} | "
                  f"{_fmt(b['mae_second_half'])} |",
                  f"| Spearman, all | {_fmt(p['spearman'])} | {_fmt(b['spearman'])} |",
                  f"| Spearman, second half | {_fmt(p['spearman_second_half'])} | "
                  f"{_fmt(b['spearman_second_half'])} |",
                  f"| MAE first quarter -> second half | {_fmt(p['mae_first_quarter'])} -> "
                  f"{_fmt(p['mae_second_half'])} | |", '']
    if 'ground_truth' in metrics:
        g = metrics['ground_truth']
        lines += ['Against the simulator\'s ground truth (detrended height RMS per cell), '
                  'Spearman:',
                  '', f"- labels: {_fmt(g['spearman_label_vs_truth'])}",
                  f"- predictions before crossing: {_fmt(g['spearman_prediction_vs_truth'])}"
                  f" (second half {_fmt(g['spearman_prediction_vs_truth_second_half'])})",
                  f"- baseline: {_fmt(g['spearman_baseline_vs_truth'])}", '']
    if 'label_classes' in metrics:
        c = metrics['label_classes']
        lines += [f"Label classes: smooth {c['smooth']}, moderate {c['moderate']}, "
                  f"rough {c['rough']}", '']
    if 'speed_limit' in metrics:
        v = metrics['speed_limit']
        lines += [f"Speed limit: mean {_fmt(v['mean_mps'], 2)} m/s, "
                  f"range {_fmt(v['min_mps'], 2)}-{_fmt(v['max_mps'], 2)} m/s", '']
    for plot in plots:
        lines += [f'![{plot.stem}]({plot.name})', '']
    files = ['`metrics.json` (all figures)', '`timing.json` (replay speed)',
             '`labels.csv` (one row per labeled patch)']
    if (out_dir / 'model.npz').exists():  # not written when nothing was learned
        files.append('`model.npz` (the learned model: arrays + JSON metadata, loads without '
                     'pickle)')
    if (out_dir / 'outputs.mcap').exists():
        files.append('`outputs.mcap` (every published topic in bag time: open it in Foxglove '
                     'with config/foxglove_layout.json)')
    lines += ['Files: ' + ', '.join(files) + '.', '']
    (out_dir / 'report.md').write_text('\n'.join(lines))
    return metrics


def undecodable_warning(undecodable: dict, last_error: str = '') -> str:
    """What was skipped because rclpy could not deserialise it (damaged records: topic ->
    count), or ''."""
    if not undecodable:
        return ''
    per_topic = ', '.join(f'{topic}: {count}' for topic, count in sorted(undecodable.items()))
    return (f'{sum(undecodable.values())} recorded message(s) could not be deserialised and '
            f'were skipped ({per_topic}); last error: {last_error}')


def _undecodable_in(info: dict) -> str:
    return undecodable_warning(info.get('messages_undecodable') or {},
                               info.get('last_undecodable_error', ''))


def summary_lines(metrics: dict, timing: dict) -> list:
    """The headline figures of a replay, as a small text table."""
    lines = [f"labeled patches: {metrics['labels']}; replay ran at "
             f"{_fmt(timing.get('realtime_factor'), 1)}x real time"]
    skipped = _undecodable_in(metrics.get('info', {}))
    if skipped:
        lines.append(f'warning: {skipped}')
    if 'prequential' not in metrics:
        return lines
    p, b = metrics['prequential'], metrics['baseline_height_spread']
    rows = [('prequential MAE (second half)', p['mae_second_half'], b['mae_second_half']),
            ('Spearman vs label (second half)', p['spearman_second_half'],
             b['spearman_second_half'])]
    g = metrics.get('ground_truth')
    if g:
        rows.append(('Spearman vs true roughness', g['spearman_prediction_vs_truth'],
                     g['spearman_baseline_vs_truth']))
    lines.append(f"{'':34s}{'terrain_ssl':>12s}{'baseline':>12s}")
    lines += [f'{name:34s}{_fmt(ours):>12s}{_fmt(theirs):>12s}' for name, ours, theirs in rows]
    if g:
        lines.append(f"labels vs true roughness: Spearman {_fmt(g['spearman_label_vs_truth'])}")
    return lines
