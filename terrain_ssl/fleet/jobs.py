"""The work of one bag, as a Ray task runs it: a replay exactly as `terrain-ssl replay` does it.

No Ray here: these are plain functions, so the same code runs in a test, in a bench, and inside a
Ray worker process (which keeps this module and the replay loaded from one task to the next, so
the package's imports are paid once per worker, not once per bag).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Tasks this process has run: the first pays the imports, the later ones do not (bench figure).
_tasks_in_this_process = 0


@dataclass(frozen=True)
class ReplaySettings:
    """What `terrain-ssl replay` takes besides the bag and --out (same meanings)."""

    topics: dict = field(default_factory=dict)     # role -> bag topic (None: auto-detect)
    config: Optional[str] = None                   # parameters file (None: the package's)
    parameters: tuple = ()                         # ('name:=value', ...) for all nodes
    start_s: float = 0.0
    duration_s: Optional[float] = None
    model_in: Optional[str] = None

    def replay_options(self, bag: str, model_out: Optional[str], extra_parameters=(),
                       outputs_mcap: Optional[str] = None):
        from terrain_ssl.replay.runner import ReplayOptions
        from terrain_ssl.ros.bringup import default_config_path

        # One process per task: a Ray task holds one CPU (the replay's processes=2 would start a
        # second process and compete with the neighbouring task for the same cores).
        return ReplayOptions(
            bag=bag, config=self.config or default_config_path(), topics=dict(self.topics),
            parameters=list(self.parameters) + list(extra_parameters), start_s=self.start_s,
            duration_s=self.duration_s, model_in=self.model_in, model_out=model_out,
            progress=False, processes=1, outputs_mcap=outputs_mcap)


def _task_clock() -> tuple:
    """(wall s, CPU s of this process) now: a task's cost is the difference of two."""
    return time.perf_counter(), time.process_time()


def _worker_facts(task_start: tuple) -> dict:
    global _tasks_in_this_process
    _tasks_in_this_process += 1
    wall_s, cpu_s = _task_clock()
    return {'pid': os.getpid(), 'host': os.uname().nodename,
            'task_index_in_worker': _tasks_in_this_process,
            'task_s': wall_s - task_start[0],
            # CPU time is what a busy shared host does not inflate.
            'task_cpu_s': cpu_s - task_start[1],
            # ru_maxrss is in KiB on Linux: the peak resident memory of this worker so far.
            'worker_max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def replay_bag_files(bag: str, settings: ReplaySettings) -> dict:
    """Replay `bag` into a scratch folder and return the folder's files as bytes.

    Returns {'status': 'ok' | 'failed', 'error': one line, 'files': {name: bytes},
    'timing': the replay's timing.json, 'worker': where and how it ran}. The files travel back
    to the caller, so no node needs to see the output folder. A bag that cannot be replayed is
    a 'failed' result, never an exception: the other bags go on.
    """
    task_start = _task_clock()
    result = {'status': 'failed', 'error': '', 'files': {}, 'timing': {}}
    try:
        from terrain_ssl.replay.report import prepare_output_folder, write_report
        from terrain_ssl.replay.runner import run_replay

        with tempfile.TemporaryDirectory(prefix='terrain_ssl_fleet_') as scratch:
            out = Path(scratch) / 'out'
            problem = prepare_output_folder(out)
            if problem:
                raise RuntimeError(problem)
            _check_model_in(settings.model_in)
            record = run_replay(settings.replay_options(bag, str(out / 'model.npz'),
                                                        outputs_mcap=str(out / 'outputs.mcap')))
            write_report(record, out)
            result['files'] = {path.name: path.read_bytes()
                               for path in sorted(out.iterdir()) if path.is_file()}
            result['timing'] = dict(record.timing)
            result['status'] = 'ok'
    except Exception as error:  # noqa: BLE001 - any failure of one bag is reported, not fatal
        result['error'] = one_line_error(error)
    result['worker'] = _worker_facts(task_start)
    return result


def _check_model_in(model_in: Optional[str]) -> None:
    """As `terrain-ssl replay --model-in` does: a clear error before the replay starts."""
    if model_in:
        from terrain_ssl.core.learner import OnlineRoughnessRegressor

        OnlineRoughnessRegressor.load(model_in)


def score_bag(bag: str, settings: ReplaySettings, overrides: dict, objective: str) -> dict:
    """Replay `bag` with parameter `overrides` {name: value}; the objective's score of it.

    Returns {'status', 'error', 'score' (lower is better), 'labels', 'worker'}.
    """
    from terrain_ssl.fleet.objectives import ObjectiveError, score_record

    task_start = _task_clock()
    result = {'status': 'failed', 'error': '', 'score': None, 'labels': 0}
    try:
        from terrain_ssl.replay.runner import run_replay

        extra = [f'{name}:={format_parameter(value)}' for name, value in overrides.items()]
        record = run_replay(settings.replay_options(bag, None, extra))
        result['labels'] = len(record.samples.get('roughness', ()))
        result['score'] = score_record(record, objective)
        result['status'] = 'ok'
    except ObjectiveError as error:
        result['error'] = str(error)
    except Exception as error:  # noqa: BLE001 - a failed trial on one bag is reported
        result['error'] = one_line_error(error)
    result['worker'] = _worker_facts(task_start)
    return result


def format_parameter(value) -> str:
    """A value as a `-p name:=value` override (YAML scalar syntax, as rcl parses it)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def one_line_error(error: BaseException) -> str:
    text = ' '.join(str(error).split()) or type(error).__name__
    return f'{type(error).__name__}: {text}' if type(error).__name__ not in text else text
