"""`terrain-ssl tune`: Optuna searches the labeler's and learner's parameters, Ray replays.

The study lives in one Optuna journal file on the driver (DIR/study.journal), so it survives
an interruption and a second run into the same DIR continues it. The driver asks Optuna for a
trial whenever a task slot is free; each (trial, bag) pair is one Ray task replaying that bag
with the trial's parameters; a trial's score is the mean over the bags its replays could
score. The first trial is always the defaults, the reference the report compares against.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

from terrain_ssl.fleet.cluster import (DEFAULT_MAX_RETRIES, FleetError, ProgressBar, remote,
                                       ray_session, run_bounded)
from terrain_ssl.fleet.evaluate import bag_duration_s
from terrain_ssl.fleet.jobs import ReplaySettings, score_bag
from terrain_ssl.fleet.objectives import OBJECTIVES

STUDY_FILE = 'study.journal'


def open_study(out_dir: Path, objective: str, seed: int):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out_dir / STUDY_FILE)))
    # constant_liar: trials asked while others still run are steered away from those.
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.create_study(study_name=f'terrain_ssl-{objective}', storage=storage,
                               sampler=sampler, direction='minimize', load_if_exists=True)


class _TrialBook:
    """Trials in flight: their per-bag scores until every bag has answered."""

    def __init__(self, study, space: dict, n_bags: int):
        self.study, self.space, self.n_bags = study, space, n_bags
        self.scores: dict = {}   # trial number -> [(score or None, error), ...]
        self.trials: dict = {}

    def ask(self):
        trial = self.study.ask(self.space)
        self.trials[trial.number] = trial
        self.scores[trial.number] = []
        return trial

    def answer(self, number: int, score: Optional[float], error: str) -> None:
        import optuna

        answers = self.scores[number]
        answers.append((score, error))
        if len(answers) < self.n_bags:
            return
        trial = self.trials.pop(number)
        del self.scores[number]
        good = [s for s, _ in answers if s is not None and math.isfinite(s)]
        errors = sorted({e for s, e in answers if e})
        trial.set_user_attr('bags_scored', len(good))
        if errors:
            trial.set_user_attr('errors', errors[:5])
        if good:
            self.study.tell(trial, sum(good) / len(good))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def tune(bags, out_dir, trials: int, objective: str = 'prequential',
         settings: ReplaySettings = ReplaySettings(), workers: Optional[int] = None,
         address: Optional[str] = None, seed: int = 0, max_retries: int = DEFAULT_MAX_RETRIES,
         progress: bool = True) -> dict:
    """Run `trials` trials (the defaults first) and write DIR/best_params.yaml, report.md,
    trials.csv and the study journal. Returns the summary the report shows."""
    from terrain_ssl.fleet.space import default_values, search_space

    if objective not in OBJECTIVES:
        raise FleetError(f'--objective must be one of {", ".join(OBJECTIVES)}')
    if trials < 1:
        raise FleetError(f'--trials must be >= 1, not {trials}')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(Path(bag).resolve()) for bag in bags]
    space = search_space(objective)
    defaults = default_values(space)
    study = open_study(out_dir, objective, seed)
    if not study.trials:
        study.enqueue_trial(defaults, user_attrs={'default': True})
    book = _TrialBook(study, space, len(paths))
    durations = [bag_duration_s(path) or 0.0 for path in paths]
    bar = ProgressBar(trials * len(paths), trials * sum(durations), progress, what='replays')

    def work():
        for _ in range(trials):
            trial = book.ask()
            for path, duration in zip(paths, durations):
                yield trial.number, trial.params, path, duration

    def on_result(item, result, error):
        number, _, _, duration = item
        score = result.get('score') if result and result['status'] == 'ok' else None
        book.answer(number, score, error or (result or {}).get('error', ''))
        bar.update(duration, score is None)

    with ray_session(address, workers) as limit:
        task = remote(score_bag, max_retries)
        run_bounded(lambda item: task.remote(item[2], settings, item[1], objective), work(),
                    limit, on_result)
    bar.close()
    return finish(study, objective, settings, defaults, len(paths), out_dir)


def finish(study, objective: str, settings: ReplaySettings, defaults: dict, n_bags: int,
           out_dir: Path) -> dict:
    """Write best_params.yaml, trials.csv and report.md from the study."""
    import optuna

    from terrain_ssl.fleet.report import write_tuning_report
    from terrain_ssl.fleet.space import parse_overrides, write_parameters_file
    from terrain_ssl.ros.bringup import default_config_path

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    default = next((t for t in study.trials if t.user_attrs.get('default')), None)
    summary = {'objective': objective, 'bags': n_bags, 'trials': len(study.trials),
               'complete': len(complete), 'defaults': defaults, 'best': {},
               'default': {'number': default.number if default else None,
                           'value': default.value if default else None}}
    write_trials_csv(study, out_dir / 'trials.csv')
    if complete:
        best = study.best_trial
        summary['best'] = {'number': best.number, 'value': best.value,
                           'params': dict(best.params)}
        values = parse_overrides(settings.parameters) | dict(best.params)
        write_parameters_file(settings.config or default_config_path(), values,
                              out_dir / 'best_params.yaml')
    write_tuning_report(study, summary, out_dir)
    return summary


def write_trials_csv(study, path: Path) -> None:
    names = sorted({name for trial in study.trials for name in trial.params})
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['number', 'state', 'value', 'bags_scored'] + names + ['errors'])
        for trial in study.trials:
            writer.writerow([trial.number, trial.state.name,
                             '' if trial.value is None else f'{trial.value:.6g}',
                             trial.user_attrs.get('bags_scored', '')]
                            + [trial.params.get(name, '') for name in names]
                            + ['; '.join(trial.user_attrs.get('errors', []))])
