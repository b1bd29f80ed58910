"""Learning quality of roughness_learner on simulated drives (issue 5's figures).

1. A 300 s drive (seed 1, 3-7 m/s) replayed through the three nodes from a cold start:
   prequential Spearman and MAE (predicted before learning vs the later label) over the second
   half, MAE of the first quarter vs the second half, and the geometric baseline (height spread
   alone, mapped monotonically, fitted on the same labels) on the same samples.
2. Terrain held out from learning: a drive over another seed's terrain, replayed with the model
   from (1) frozen (learn:=false); Spearman of its predictions against the true roughness of each
   crossed cell.

    .venv/bin/python bench/bench_learning.py [--quick]
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from terrain_ssl.replay.report import write_report
from terrain_ssl.replay.runner import ReplayOptions, run_replay
from terrain_ssl.ros.bringup import default_config_path
from terrain_ssl.sim.bag import simulate_bag


def replay(bag: Path, out: Path, **options) -> dict:
    record = run_replay(ReplayOptions(bag=str(bag), config=default_config_path(),
                                      progress=False, **options))
    return write_report(record, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='120 s + 60 s drives')
    parser.add_argument('--keep', help='keep bags and reports in this folder')
    parser.add_argument('--held-out-seed', type=int, default=2,
                        help='terrain seed of the held-out drive (the learning drive is seed 1)')
    args = parser.parse_args()
    learn_s, held_out_s = (120.0, 60.0) if args.quick else (300.0, 120.0)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='bench_learning_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        for name in ('learn_bag', 'held_out_bag'):
            shutil.rmtree(work / name, ignore_errors=True)
        simulate_bag(work / 'learn_bag', duration_s=learn_s, seed=1, speed='3:7',
                     storage='mcap')
        simulate_bag(work / 'held_out_bag', duration_s=held_out_s, seed=args.held_out_seed,
                     speed='3:7', storage='mcap')
        print(f'simulated {learn_s:.0f} s (seed 1) and {held_out_s:.0f} s '
              f'(seed {args.held_out_seed}) in '
              f'{time.perf_counter() - start:.0f} s')

        learned = replay(work / 'learn_bag', work / 'learn_report',
                         model_out=str(work / 'model.npz'))
        p, b = learned['prequential'], learned['baseline_height_spread']
        g = learned['ground_truth']
        print(f"\n{learn_s:.0f} s drive, cold start, {learned['labels']} labels "
              f'(predict, then learn):')
        print(f"{'':40s}{'terrain_ssl':>12s}{'baseline':>10s}")
        print(f"{'prequential Spearman, second half':40s}{p['spearman_second_half']:12.3f}"
              f"{b['spearman_second_half']:10.3f}   target >= 0.7")
        print(f"{'prequential MAE, second half':40s}{p['mae_second_half']:12.3f}"
              f"{b['mae_second_half']:10.3f}   target: below the baseline")
        print(f"{'prequential MAE, all':40s}{p['mae']:12.3f}{b['mae']:10.3f}")
        print(f"{'MAE first quarter -> second half':40s}{p['mae_first_quarter']:7.3f} -> "
              f"{p['mae_second_half']:.3f}   target: it falls (it learns)")
        print(f"{'Spearman vs true roughness':40s}{g['spearman_prediction_vs_truth']:12.3f}"
              f"{g['spearman_baseline_vs_truth']:10.3f}")

        held = replay(work / 'held_out_bag', work / 'held_out_report',
                      model_in=str(work / 'model.npz'), parameters=['learn:=false'])
        rho = held['ground_truth']['spearman_prediction_vs_truth']
        print(f"\nheld-out terrain (seed {args.held_out_seed}, model frozen), "
              f"{held['labels']} crossed cells: "
              f'Spearman(prediction, true roughness) = {rho:.3f}   target >= 0.7')
        print(f"  (the labels themselves vs truth on that drive: "
              f"{held['ground_truth']['spearman_label_vs_truth']:.3f})")
        print('RESULT learner_prequential_spearman_second_half '
              f"{p['spearman_second_half']:.3f} rho")
        print(f"RESULT learner_prequential_mae_second_half {p['mae_second_half']:.4f} label-units")
        print('RESULT baseline_prequential_mae_second_half '
              f"{b['mae_second_half']:.4f} label-units")
        print(f'RESULT learner_held_out_spearman_vs_truth {rho:.3f} rho')
        (work / 'bench_learning.json').write_text(json.dumps(
            {'learn': learned, 'held_out': held}, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
