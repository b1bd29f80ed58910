"""report.md of `terrain-ssl evaluate` (pooled figures, one plot) and of `terrain-ssl tune`
(best against default, parameter importances)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from terrain_ssl.core.metrics import finite_spearman


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def read_labels(path: Path) -> dict:
    """labels.csv (one row per labeled patch) -> column name -> float array."""
    with open(path, newline='') as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        return {}
    values = np.array(rows[1:], dtype=float)
    return {name: values[:, i] for i, name in enumerate(rows[0])}


def pooled_figures(outcomes, out_dir: Path) -> dict:
    """Figures over every labeled patch of every replayed bag, as if one long drive."""
    columns: dict = {}
    for outcome in outcomes:
        labels_csv = out_dir / 'bags' / outcome.name / 'labels.csv'
        if outcome.status != 'ok' or not labels_csv.exists():
            continue
        for name, values in read_labels(labels_csv).items():
            columns.setdefault(name, []).append(values)
    pooled = {name: np.concatenate(parts) for name, parts in columns.items()}
    figures = {'bags': len(outcomes), 'bags_ok': sum(o.status == 'ok' for o in outcomes),
               'bag_hours': sum(o.bag_s or 0.0 for o in outcomes if o.status == 'ok') / 3600.0,
               'labels': int(len(pooled.get('roughness', ())))}
    if not figures['labels']:
        return figures
    measured = pooled['roughness']
    for who, column in (('terrain_ssl', 'predicted'), ('baseline', 'baseline')):
        error = np.abs(pooled[column] - measured)
        figures[f'{who}_mae'] = float(np.nanmean(error)) if np.isfinite(error).any() else None
        figures[f'{who}_spearman'] = finite_spearman(pooled[column], measured)
        if 'truth' in pooled:
            figures[f'{who}_truth_spearman'] = finite_spearman(pooled[column], pooled['truth'])
    if 'truth' in pooled:
        figures['labels_truth_spearman'] = finite_spearman(measured, pooled['truth'])
    return figures


def write_comparison_plot(outcomes, path: Path) -> bool:
    """Prequential MAE per bag, terrain_ssl beside the height-spread baseline."""
    ok = [o for o in outcomes if o.status == 'ok' and 'prequential' in o.metrics]
    if not ok:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ours = [o.metrics['prequential']['mae'] or np.nan for o in ok]
    theirs = [o.metrics['baseline_height_spread']['mae'] or np.nan for o in ok]
    positions = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(ok) + 2.0), 4))
    ax.bar(positions - 0.2, ours, 0.4, label='terrain_ssl (predict, then learn)')
    ax.bar(positions + 0.2, theirs, 0.4, label='baseline: height spread alone')
    ax.set_xticks(positions, [o.name for o in ok], rotation=45 if len(ok) > 6 else 0,
                  ha='right' if len(ok) > 6 else 'center')
    ax.set_ylabel('prequential MAE [(m/s^2)/(m/s)]')
    ax.set_title('Prequential error per bag')
    ax.legend()
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_evaluation_report(outcomes, out_dir: Path) -> dict:
    """DIR/report.md and DIR/bags_mae.png; returns the pooled figures."""
    out_dir = Path(out_dir)
    figures = pooled_figures(outcomes, out_dir)
    lines = ['# terrain_ssl fleet evaluation', '',
             f"Bags: {figures['bags']} ({figures['bags_ok']} replayed, "
             f"{figures['bags'] - figures['bags_ok']} failed), "
             f"{figures['bag_hours'] * 60:.1f} bag-minutes, "
             f"**{figures['labels']}** labeled patches.", '']
    if figures['labels']:
        lines += ['Pooled over every labeled patch of every bag:', '',
                  '| | terrain_ssl | baseline: height spread |', '|---|---|---|',
                  f"| prequential MAE | {_fmt(figures['terrain_ssl_mae'])} | "
                  f"{_fmt(figures['baseline_mae'])} |",
                  f"| Spearman vs label | {_fmt(figures['terrain_ssl_spearman'])} | "
                  f"{_fmt(figures['baseline_spearman'])} |"]
        if 'labels_truth_spearman' in figures:
            lines += [f"| Spearman vs true roughness | "
                      f"{_fmt(figures['terrain_ssl_truth_spearman'])} | "
                      f"{_fmt(figures['baseline_truth_spearman'])} |", '',
                      f"Labels vs true roughness: Spearman "
                      f"{_fmt(figures['labels_truth_spearman'])}."]
        lines.append('')
    lines += ['| bag | status | bag s | labels | MAE | baseline MAE | Spearman vs truth | '
              'replay s |', '|---|---|---|---|---|---|---|---|']
    for outcome in outcomes:
        row = outcome.row()
        status = 'ok' if outcome.status == 'ok' else f"failed: {outcome.error.replace('|', '/')}"
        name = f'[{outcome.name}](bags/{outcome.name}/report.md)' if outcome.status == 'ok' \
            else outcome.name
        lines.append(f"| {name} | {status} | "
                     f"{_fmt(row['bag_s'], 1)} | {_fmt(row['labels'])} | "
                     f"{_fmt(row['prequential_mae'])} | {_fmt(row['baseline_mae'])} | "
                     f"{_fmt(row['truth_spearman'])} | {_fmt(row['replay_s'], 1)} |")
    lines.append('')
    if write_comparison_plot(outcomes, out_dir / 'bags_mae.png'):
        lines += ['![prequential MAE per bag](bags_mae.png)', '']
    lines += ['Files: `summary.csv` (one row per bag), `bags/<name>/` (what `terrain-ssl replay '
              '--out` writes for that bag).', '']
    (out_dir / 'report.md').write_text('\n'.join(lines))
    return figures


def parameter_importances(study, min_trials: int = 5) -> tuple:
    """(name -> importance, note): Optuna's fANOVA importances, or {} and why there are none."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < min_trials:
        return {}, (f'{len(complete)} completed trial(s): too few for parameter importances '
                    f'(needs {min_trials})')
    try:
        return dict(optuna.importance.get_param_importances(study)), ''
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        return {}, f'no parameter importances: {" ".join(str(error).split())}'


def write_tuning_report(study, summary: dict, out_dir: Path) -> None:
    """DIR/report.md of a tuning run: best against default, changed parameters, importances."""
    best, default = summary['best'], summary['default']
    lines = ['# terrain_ssl tuning', '',
             f"Objective: **{summary['objective']}** (lower is better), over "
             f"{summary['bags']} bag(s); {summary['complete']} of {summary['trials']} trials "
             'completed.', '',
             '| | score |', '|---|---|',
             f"| default parameters (trial {_fmt(default.get('number'))}) | "
             f"{_fmt(default.get('value'), 4)} |",
             f"| best (trial {_fmt(best.get('number'))}) | {_fmt(best.get('value'), 4)} |", '']
    if best.get('params'):
        lines += ['| parameter | default | best |', '|---|---|---|']
        for name, value in best['params'].items():
            shown = f'{value:.4g}' if isinstance(value, float) else value
            lines.append(f"| `{name}` | `{summary['defaults'].get(name)}` | `{shown}` |")
        lines.append('')
    importances, note = parameter_importances(study)
    if importances:
        lines += ['Parameter importances (fANOVA):', '', '| parameter | importance |',
                  '|---|---|']
        lines += [f'| `{name}` | {value:.3f} |' for name, value in importances.items()]
    else:
        lines.append(note + '.')
    lines += ['', 'Files: `best_params.yaml` (use with `terrain-ssl replay --config` or as the '
              'nodes\' params file), `study.journal` (the Optuna study: '
              '`optuna.load_study(storage=JournalStorage(JournalFileBackend(path)))`), '
              '`trials.csv`.', '']
    (Path(out_dir) / 'report.md').write_text('\n'.join(lines))
