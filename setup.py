from glob import glob

import sys

from setuptools import Extension, find_packages, setup

package_name = 'terrain_ssl'

# The inner loops of a lidar scan (terrain_ssl/core/patches.py), of the cell map (association.py)
# and of a batch of labels (shocks, mean speeds: vibration.py, geometry.py), in C: bit-identical
# to their numpy reference, which runs when this could not be built (no C compiler: pip warns,
# and terrain_ssl warns at import). No FMA contraction, so both round alike.
core_kernels = Extension(
    'terrain_ssl.core._kernels', ['terrain_ssl/core/_kernels.c'],
    extra_compile_args=[] if sys.platform == 'win32' else ['-O3', '-ffp-contract=off'],
    optional=True)

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    ext_modules=[core_kernels],
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    # rclpy and the message packages come from the ROS 2 distro (colcon) or from
    # requirements-ros.txt (plain venv); they are deliberately not install_requires.
    install_requires=['setuptools', 'numpy', 'scipy', 'scikit-learn', 'rosbags', 'PyYAML'],
    extras_require={
        'perception': ['open3d', 'opencv-python-headless'],
        'report': ['matplotlib'],
        'fleet': ['ray==2.60.0', 'optuna==5.0.0'],
        'test': ['pytest'],
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
