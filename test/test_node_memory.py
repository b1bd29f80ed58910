"""What a node process holds in memory: freed message buffers stay mapped for the next message
and release_free_memory gives them back; OpenCV is loaded only where a Nav2 mask is made. Each
case runs in a fresh interpreter (the allocator's settings and the loaded modules are per
process)."""

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc',
                                reason='the allocator settings are glibc\'s')

# RSS (MB) with a 16 MB buffer alive, after it is freed, and after release_free_memory.
SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    from terrain_ssl.ros.heap import keep_message_buffers, release_free_memory

    def rss_mb():
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0

    tuned = sys.argv[1] == 'tuned' and keep_message_buffers()
    buffer = np.ones(2 * 2 ** 20)  # 16 MB, every page written
    alive = rss_mb()
    del buffer
    freed = rss_mb()
    release_free_memory()
    print(tuned, alive, freed, rss_mb())
''')


def rss_after(mode: str) -> tuple:
    result = subprocess.run([sys.executable, '-c', SCRIPT, mode], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=True)
    tuned, alive, freed, released = result.stdout.split()
    return tuned == 'True', float(alive), float(freed), float(released)


@glibc_only
def test_a_freed_message_buffer_stays_mapped_until_released():
    tuned, alive, freed, released = rss_after('tuned')
    assert tuned
    assert freed > alive - 2.0  # kept for the next message: no page faults to map it again
    assert released < alive - 12.0  # and given back by release_free_memory


@glibc_only
def test_without_the_setting_a_large_buffer_goes_back_to_the_kernel_when_freed():
    # What the nodes paid per scan before: glibc unmaps a block this large on free.
    tuned, alive, freed, _ = rss_after('default')
    assert not tuned
    assert freed < alive - 12.0


OPENCV_SCRIPT = textwrap.dedent('''
    import sys
    import rclpy
    from terrain_ssl.core.advisor import AdvisorConfig
    from terrain_ssl.core.speed_mask import MaskConfig, nav2_grids
    from terrain_ssl.ros.pipeline import create_nodes

    rclpy.init()
    nodes = create_nodes()
    before = 'cv2' in sys.modules
    nav2_grids(None, (0.0, 0.0), 0.0, AdvisorConfig(), MaskConfig())
    print(before, 'cv2' in sys.modules)
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown()
''')


def test_opencv_is_loaded_only_when_a_nav2_mask_is_made():
    result = subprocess.run([sys.executable, '-c', OPENCV_SCRIPT], capture_output=True,
                            text=True, cwd=REPO, timeout=120, check=True)
    assert result.stdout.split() == ['False', 'True']
