from glob import glob

import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

package_name = 'terrain_ssl'

# The inner loops of the core (a lidar scan's cells, the cell map, a batch of labels, the
# learner's SGD pass) in C: the package's only implementation of them (see core/kernels.py).
core_kernels = Extension(
    'terrain_ssl.core._kernels', ['terrain_ssl/core/_kernels.c'],
    extra_compile_args=[] if sys.platform == 'win32' else ['-O3'])


class BuildKernels(build_ext):
    """build_ext that says in one line what is missing when the C core cannot be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # CompileError, a missing compiler, missing headers
            sys.exit('terrain_ssl: cannot compile terrain_ssl/core/_kernels.c: it needs a C '
                     'compiler and the Python headers (Debian/Ubuntu: sudo apt-get install gcc '
                     f'python3-dev) [{type(error).__name__}: {error}]')


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    ext_modules=[core_kernels],
    cmdclass={'build_ext': BuildKernels},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')
                                          + glob('config/*.json') + glob('config/*.rviz')),
        ('share/' + package_name + '/config/presets', glob('config/presets/*.yaml')),
    ],
    # rclpy and the message packages come from the ROS 2 distro (colcon) or from
    # requirements-ros.txt (plain venv); they are deliberately not install_requires.
    install_requires=['numpy', 'scipy', 'scikit-learn', 'threadpoolctl', 'rosbags', 'mcap',
                      'PyYAML', 'opencv-python-headless'],
    extras_require={
        'report': ['matplotlib'],
        'fleet': ['ray', 'optuna'],  # terrain-ssl evaluate / tune over many bags
        'patchwork': ['pypatchworkpp'],  # ground.method: patchwork (Patchwork++)
        'test': ['pytest', 'ruff', 'mcap-ros2-support'],
    },
    zip_safe=False,
    maintainer='terrain_ssl developers',
    maintainer_email='dev@terrain-ssl.invalid',
    description='Online self-supervised terrain-roughness learning for off-road ground robots.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'roughness_labeler = terrain_ssl.ros.labeler_node:main',
            'roughness_learner = terrain_ssl.ros.learner_node:main',
            'speed_advisor = terrain_ssl.ros.advisor_node:main',
            'terrain-ssl = terrain_ssl.cli:main',
        ],
    },
)
