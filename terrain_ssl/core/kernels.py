"""The compiled loops of the core, built from `_kernels.c` wherever the package is installed
(`pip install`, `make setup`, `colcon build`; setup.py).

They are the only implementation the package runs; test/numpy_reference.py keeps a readable
numpy version of each, which test/test_kernels.py compares with them within stated tolerances.
"""

BUILD_HINT = ('terrain_ssl: the compiled core (terrain_ssl/core/_kernels.c) is not built; '
              'build it with a C compiler and the Python headers: pip install -e . '
              '(or make setup, or colcon build)')

try:
    from terrain_ssl.core._kernels import (cell_features, cell_moments, closed_form_eigen_3x3,
                                           count_finite, deskew_points_to_frame,
                                           finite_points_to_frame,
                                           footprint_update, merge_sightings, plane_fits,
                                           sgd_epoch, smooth_surfaces, stale_slots, window_means,
                                           window_shocks)
except ImportError as error:
    raise ImportError(f'{BUILD_HINT} ({error})') from None

__all__ = ['cell_features', 'cell_moments', 'closed_form_eigen_3x3', 'count_finite',
           'deskew_points_to_frame', 'finite_points_to_frame', 'footprint_update',
           'merge_sightings', 'plane_fits', 'sgd_epoch', 'smooth_surfaces', 'stale_slots',
           'window_means', 'window_shocks']
