"""Closed loop, several laps: over-limit shocks, peak shock, mean speed and lap time per policy.

    PYTHONPATH=. .venv/bin/python bench/bench_closed_loop.py [--laps 3] [--seed 0] [--quick]

Policies: constant v_max; terrain_ssl (the three real nodes, cold start, learning live; the
vehicle drives at the published speed limit); oracle (the same speed rule, uncertainty 0, on the
terrain's measured roughness: per cell the labeler's own label from constant-speed calibration
drives at 2 and 4 m/s, averaged); oracle-max (per cell the worst 0.5 s IMU window instead).
Targets (laps 2+): terrain_ssl >= 80% fewer over-limit events than constant, lap time
<= 1.25 x the oracle's. Same as `terrain-ssl closed-loop`.
"""

import sys

from terrain_ssl.cli import main

if __name__ == '__main__':
    sys.exit(main(['closed-loop'] + sys.argv[1:]))
