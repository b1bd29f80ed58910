"""The DDS environment of the benchmarks that run nodes over DDS, set before rclpy loads.

An own domain on this host only (`BENCH_ROS_DOMAIN_ID`, else a random one in 101-200), so that
other runs on the machine cannot disturb the figures; Fast DDS; and the profile the README tells
robot users to export ("Large point clouds"): without it a 0.5 MB VLP-16 scan does not fit Fast
DDS's 512 KB shared-memory segment and goes as fragmented best-effort UDP, where a lost fragment
loses the scan (measured: 90 of 150 scans never reached the labeler).
"""

import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def isolate_dds() -> None:
    os.environ['ROS_DOMAIN_ID'] = os.environ.get('BENCH_ROS_DOMAIN_ID',
                                                 str(random.SystemRandom().randint(101, 200)))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                          str(REPO / 'config' / 'fastdds_large_messages.xml'))
