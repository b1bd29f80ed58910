/* Compiled kernels of terrain_ssl.core: the loops that numpy could only express as many
 * whole-array passes (sorts, gathers, bincounts, masks):
 *   - patches.py, one lidar scan: the finite count and transform to odom, the per-cell moments,
 *     plane fits, features, neighbour steps and neighbourhood means;
 *   - association.py, the cell map: the footprint test of the candidate cells, the merge of a
 *     scan's repeated sightings and the age-out scan;
 *   - vibration.py and geometry.py, a batch of labels: the shock (RMS or peak) and the mean
 *     speed over each crossing's window;
 *   - learner.py: one pass of stochastic gradient descent of a linear model.
 *
 * This is the only implementation the package runs. test/numpy_reference.py holds a readable
 * numpy version of each, and test/test_kernels.py compares the two within stated tolerances
 * (the compiler may contract multiply-adds and sums run in another order than numpy's).
 *
 * Arrays cross as buffers (float64 / int64 / bool, C-contiguous unless said otherwise, sizes
 * checked here, dtypes by the Python callers), so no numpy headers are needed to build this.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The 9 per-cell sums of cell_moments, in this order (rows of `sums`). */
enum { SUM_DX, SUM_DY, SUM_DZ, SUM_DXDX, SUM_DYDY, SUM_DZDZ, SUM_DXDY, SUM_DXDZ, SUM_DYDZ,
       N_SUMS };

static int
get_buffer(PyObject *object, Py_buffer *view, int writable, Py_ssize_t item_size,
           Py_ssize_t min_items, const char *name)
{
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0))
            < 0) {
        return -1;
    }
    if (view->itemsize != item_size || view->len / item_size < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name,
                     min_items, item_size);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void
release_all(Py_buffer *views, int count)
{
    for (int i = 0; i < count; i++) {
        if (views[i].obj != NULL) {
            PyBuffer_Release(&views[i]);
        }
    }
}

/* How one argument buffer is acquired: its items' size (bytes), whether it is written, and its
   least length: `items` times the items of the earlier buffer `of`, or `items` when `of` is -1. */
typedef struct {
    const char *name;
    Py_ssize_t item_size;
    int writable;
    int of;
    Py_ssize_t items;
} BufferSpec;

static Py_ssize_t
items_of(const Py_buffer *view)
{
    return view->len / view->itemsize;
}

/* The buffers of objects[0 .. count) as `specs` say: 0, or -1 with an exception set and none
   held. */
static int
get_buffers(PyObject **objects, Py_buffer *views, int count, const BufferSpec *specs)
{
    for (int i = 0; i < count; i++) {
        const BufferSpec *spec = &specs[i];
        const Py_ssize_t wanted = spec->of < 0 ? spec->items
                                               : spec->items * items_of(&views[spec->of]);
        if (get_buffer(objects[i], &views[i], spec->writable, spec->item_size, wanted,
                       spec->name) < 0) {
            release_all(views, i);
            return -1;
        }
    }
    return 0;
}

/* floor(v), without a libm call per point (x86-64 has no floor instruction before SSE4.1):
   exact for |v| < 2^52, where every double with a fraction converts to int64 by truncation;
   beyond that v has no fraction, or is not finite, and goes to floor(). */
static inline double
fast_floor(double v)
{
    if (!(v > -4503599627370496.0 && v < 4503599627370496.0)) {
        return floor(v);
    }
    const double truncated = (double)(int64_t)v;
    return truncated > v ? truncated - 1.0 : truncated;
}

/* A dense grid of rows x columns int32 slots, zeroed; NULL (MemoryError set) if too large
   (more slots than int32 numbers). */
static int32_t *
new_index_grid(int64_t rows, int64_t columns)
{
    if (rows <= 0 || columns <= 0 || rows > INT32_MAX / columns) {
        PyErr_SetString(PyExc_MemoryError, "cell grid too large");
        return NULL;
    }
    int32_t *grid = calloc((size_t)(rows * columns), sizeof(int32_t));
    if (grid == NULL) {
        PyErr_NoMemory();
    }
    return grid;
}

PyDoc_STRVAR(cell_moments_doc,
"cell_moments(x, y, z, origin_x, origin_y, cell_size, ground_band, min_range, max_range,\n"
"             present, count, z_min, sums, dz_max) -> (cells, ix0, iy0, nx, ny)\n\n"
"Points x, y, z (N float64 each, m) within [min_range, max_range] of the origin\n"
"(horizontally) are binned into cell_size cells of a dense nx x ny grid starting at cell\n"
"(ix0, iy0). For each of the `cells` cells with points, in ascending flat index\n"
"(ix - ix0) * ny + (iy - iy0): present (that index), z_min (lowest point), count (ground\n"
"points: within ground_band of z_min), the 9 sums (rows of `sums`, N each) of dx, dy, dz,\n"
"dx dx, dy dy, dz dz, dx dy, dx dz, dy dz over the ground points (dx, dy from the cell centre,\n"
"dz from z_min), and dz_max (-inf without ground points). Outputs need room for N cells.");

static PyObject *
cell_moments(PyObject *module, PyObject *args)
{
    PyObject *objects[8];
    double origin_x, origin_y, cell_size, ground_band, min_range, max_range;
    if (!PyArg_ParseTuple(args, "OOOddddddOOOOO", &objects[0], &objects[1], &objects[2],
                          &origin_x, &origin_y, &cell_size, &ground_band, &min_range,
                          &max_range, &objects[3], &objects[4], &objects[5], &objects[6],
                          &objects[7])) {
        return NULL;
    }
    static const BufferSpec specs[8] = {
        {"x", 8, 0, -1, 0}, {"y", 8, 0, -1, 0}, {"z", 8, 0, -1, 0}, {"present", 8, 1, 0, 1},
        {"count", 8, 1, 0, 1}, {"z_min", 8, 1, 0, 1}, {"sums", 8, 1, 0, N_SUMS},
        {"dz_max", 8, 1, 0, 1}};
    Py_buffer views[8] = {{0}};
    if (get_buffers(objects, views, 8, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t n = items_of(&views[0]);
    if (items_of(&views[1]) != n || items_of(&views[2]) != n) {
        PyErr_SetString(PyExc_ValueError, "x, y and z differ in length");
        release_all(views, 8);
        return NULL;
    }
    const double *x = views[0].buf, *y = views[1].buf, *z = views[2].buf;
    int64_t *present = views[3].buf, *count = views[4].buf;
    double *z_min = views[5].buf, *sums = views[6].buf, *dz_max = views[7].buf;

    int64_t cells = 0, ix0 = 0, iy0 = 0, nx = 0, ny = 0;
    int32_t *kept = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    int32_t *cell_of = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    double *cell_xy = malloc((size_t)(n > 0 ? n : 1) * 2 * sizeof(double));
    double *centre = NULL;
    int32_t *grid = NULL;
    int failed = 0;
    if (kept == NULL || cell_of == NULL || cell_xy == NULL || n > INT32_MAX) {
        PyErr_NoMemory();
        failed = 1;
        goto done;
    }

    /* Pass 1: the points in range (horizontal distance from the origin) and the grid's
       extent in whole cells (floats, as np.floor gives them). */
    const double min_sq = min_range * min_range, max_sq = max_range * max_range;
    Py_ssize_t n_kept = 0;
    double fx_min = 0.0, fx_max = 0.0, fy_min = 0.0, fy_max = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double ex = x[i] - origin_x, ey = y[i] - origin_y;
        const double distance_sq = ex * ex + ey * ey;
        if (!(distance_sq >= min_sq && distance_sq <= max_sq)) {
            continue;
        }
        const double fx = fast_floor(x[i] / cell_size), fy = fast_floor(y[i] / cell_size);
        if (n_kept == 0) {
            fx_min = fx_max = fx;
            fy_min = fy_max = fy;
        } else {
            fx_min = fx < fx_min ? fx : fx_min;
            fx_max = fx > fx_max ? fx : fx_max;
            fy_min = fy < fy_min ? fy : fy_min;
            fy_max = fy > fy_max ? fy : fy_max;
        }
        cell_xy[2 * n_kept] = fx;
        cell_xy[2 * n_kept + 1] = fy;
        kept[n_kept++] = (int32_t)i;
    }
    if (n_kept == 0) {
        goto done;
    }
    if (!(fx_max - fx_min < 1e15 && fy_max - fy_min < 1e15)) {
        PyErr_SetString(PyExc_MemoryError, "cell grid too large");
        failed = 1;
        goto done;
    }
    ix0 = (int64_t)fx_min;
    iy0 = (int64_t)fy_min;
    nx = (int64_t)(fx_max - fx_min) + 1;
    ny = (int64_t)(fy_max - fy_min) + 1;
    grid = new_index_grid(nx, ny);
    if (grid == NULL) {
        failed = 1;
        goto done;
    }

    /* Mark the cells with points, then number them in flat-index order (grid slot: number + 1). */
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        const int64_t flat = (int64_t)(cell_xy[2 * k] - fx_min) * ny
                             + (int64_t)(cell_xy[2 * k + 1] - fy_min);
        cell_of[k] = (int32_t)flat;  /* the flat index for now; < nx * ny */
        grid[flat] = 1;
    }
    const int64_t grid_size = nx * ny;
    for (int64_t flat = 0; flat < grid_size; flat++) {
        if (grid[flat]) {
            present[cells] = flat;
            grid[flat] = (int32_t)(++cells);
        }
    }
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        cell_of[k] = grid[cell_of[k]] - 1;
    }

    /* Lowest point per cell (NaN propagates, as in np.minimum.reduceat). */
    for (int64_t c = 0; c < cells; c++) {
        z_min[c] = INFINITY;
        count[c] = 0;
        dz_max[c] = -INFINITY;
    }
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        const double zk = z[kept[k]];
        double *lowest = &z_min[cell_of[k]];
        if (zk < *lowest || zk != zk) {
            if (*lowest == *lowest) {
                *lowest = zk;
            }
        }
    }

    /* Cell centres, then the ground points' sums in scan order. */
    centre = malloc((size_t)(2 * cells) * sizeof(double));
    if (centre == NULL) {
        PyErr_NoMemory();
        failed = 1;
        goto done;
    }
    for (int64_t c = 0; c < cells; c++) {
        centre[2 * c] = ((double)(present[c] / ny + ix0) + 0.5) * cell_size;
        centre[2 * c + 1] = ((double)(present[c] % ny + iy0) + 0.5) * cell_size;
    }
    for (int s = 0; s < N_SUMS; s++) {
        for (int64_t c = 0; c < cells; c++) {
            sums[s * n + c] = 0.0;
        }
    }
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        const Py_ssize_t i = kept[k];
        const int64_t c = cell_of[k];
        const double dz = z[i] - z_min[c];
        if (!(dz <= ground_band)) {
            continue;
        }
        const double dx = x[i] - centre[2 * c], dy = y[i] - centre[2 * c + 1];
        count[c] += 1;
        sums[SUM_DX * n + c] += dx;
        sums[SUM_DY * n + c] += dy;
        sums[SUM_DZ * n + c] += dz;
        sums[SUM_DXDX * n + c] += dx * dx;
        sums[SUM_DYDY * n + c] += dy * dy;
        sums[SUM_DZDZ * n + c] += dz * dz;
        sums[SUM_DXDY * n + c] += dx * dy;
        sums[SUM_DXDZ * n + c] += dx * dz;
        sums[SUM_DYDZ * n + c] += dy * dz;
        dz_max[c] = dz > dz_max[c] ? dz : dz_max[c];
    }

done:
    free(kept);
    free(cell_of);
    free(cell_xy);
    free(centre);
    free(grid);
    release_all(views, 8);
    if (failed) {
        return NULL;
    }
    return Py_BuildValue("(LLLLL)", (long long)cells, (long long)ix0, (long long)iy0,
                         (long long)nx, (long long)ny);
}

/* Padded grid of the occupied cells: slot (i + pad) * (ny + 2 pad) + j + pad holds the row
   number + 1 of the cell with flat index i * ny + j, 0 where no cell is. */
static int32_t *
occupied_grid(const int64_t *occupied, Py_ssize_t m, int64_t nx, int64_t ny, int64_t pad)
{
    if (nx <= 0 || ny <= 0 || pad < 0 || nx > INT64_MAX / 4 || ny > INT64_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "invalid grid size");
        return NULL;
    }
    const int64_t width = ny + 2 * pad;
    int32_t *grid = new_index_grid(nx + 2 * pad, width);
    if (grid == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t flat = occupied[k];
        if (flat < 0 || flat >= nx * ny) {
            free(grid);
            PyErr_SetString(PyExc_ValueError, "occupied cell outside the grid");
            return NULL;
        }
        grid[(flat / ny + pad) * width + flat % ny + pad] = (int32_t)(k + 1);
    }
    return grid;
}

/* The 8 neighbour offsets (cells) around a cell. */
static const int neighbour_di[8] = {-1, -1, -1, 0, 0, 1, 1, 1};
static const int neighbour_dj[8] = {-1, 0, 1, -1, 1, -1, 0, 1};

/* max_neighbour_step on raw arrays: mean_z[k * z_stride], out[k * out_stride]. 0, or -1 with
   an exception set. */
static int
max_step_core(const int64_t *occupied, Py_ssize_t m, const double *mean_z, Py_ssize_t z_stride,
              const double *gradient_x, const double *gradient_y, int64_t nx, int64_t ny,
              double cell_size, double *out, Py_ssize_t out_stride)
{
    int32_t *grid = occupied_grid(occupied, m, nx, ny, 1);
    if (grid == NULL) {
        return -1;
    }
    const int64_t width = ny + 2;
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t at = (occupied[k] / ny + 1) * width + occupied[k] % ny + 1;
        const double z = mean_z[k * z_stride];
        double largest = 0.0;
        for (int e = 0; e < 8; e++) {
            const int32_t neighbour = grid[at + neighbour_di[e] * width + neighbour_dj[e]];
            if (neighbour == 0) {
                continue;  /* no neighbour there */
            }
            const double predicted = z + ((double)neighbour_di[e] * gradient_x[k]
                                          + (double)neighbour_dj[e] * gradient_y[k]) * cell_size;
            largest = fmax(largest, fabs(mean_z[(neighbour - 1) * z_stride] - predicted));
        }
        out[k * out_stride] = largest;
    }
    free(grid);
    return 0;
}

/* out[e] = first[e] + first[spacing + e] + ... over `count` blocks of `length` values. */
static void
add_in_order(const double *first, int64_t spacing, int64_t count, int64_t length, double *out)
{
    for (int64_t e = 0; e < length; e++) {
        out[e] = first[e];
    }
    for (int64_t block = 1; block < count; block++) {
        const double *next = first + block * spacing;
        for (int64_t e = 0; e < length; e++) {
            out[e] += next[e];
        }
    }
}

/* neighbourhood_mean on raw arrays: channel c of cell k is values[k * values_stride +
   columns[c]], its mean goes to out[k * out_stride + out_columns[c]]. 0, or -1 with an exception
   set. A zero-padded dense grid of the values and a count channel (1 at occupied cells),
   summed along x over rows i .. i + 2 hw of the padded grid, then those column sums along y
   (j .. j + 2 hw). The x sums are made one grid row at a time, for the rows that have occupied
   cells. */
static int
neighbourhood_core(const int64_t *occupied, Py_ssize_t m, const double *values,
                   int64_t values_stride, const int *columns, int64_t channels, int64_t nx,
                   int64_t ny, int64_t half_width, double *out, int64_t out_stride,
                   const int *out_columns)
{
    if (channels <= 0 || channels > 64 || half_width < 0 || half_width > 64 || nx <= 0
            || ny <= 0 || nx > INT32_MAX || ny > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "channels must be 1..64, half_width 0..64");
        return -1;
    }
    const int64_t stride = channels + 1, span = 2 * half_width + 1;
    const int64_t width = ny + 2 * half_width, rows = nx + 2 * half_width;
    if (rows > INT32_MAX / width || rows * width > INT32_MAX / stride) {
        PyErr_SetString(PyExc_MemoryError, "cell grid too large");
        return -1;
    }
    double *grid = calloc((size_t)(rows * width * stride), sizeof(double));
    double *along_x = malloc((size_t)(width * stride) * sizeof(double));
    int failed = 0;
    if (grid == NULL || along_x == NULL) {
        PyErr_NoMemory();
        failed = 1;
        goto done;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t flat = occupied[k];
        if (flat < 0 || flat >= nx * ny) {
            PyErr_SetString(PyExc_ValueError, "occupied cell outside the grid");
            failed = 1;
            goto done;
        }
        double *slot = grid + ((flat / ny + half_width) * width + flat % ny + half_width) * stride;
        for (int64_t c = 0; c < channels; c++) {
            slot[c] = values[k * values_stride + columns[c]];
        }
        slot[channels] = 1.0;
    }
    const int64_t row_length = width * stride;
    int64_t along_x_row = -1;  /* the grid row along_x holds the x sums of */
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t i = occupied[k] / ny, j = occupied[k] % ny;
        if (i != along_x_row) {
            add_in_order(grid + i * row_length, row_length, span, row_length, along_x);
            along_x_row = i;
        }
        double window[65];
        add_in_order(along_x + j * stride, stride, span, stride, window);
        for (int64_t c = 0; c < channels; c++) {
            out[k * out_stride + out_columns[c]] = window[c] / window[channels];
        }
    }
done:
    free(grid);
    free(along_x);
    return failed ? -1 : 0;
}

/* np.maximum: NaN if either is NaN (fmax would drop it). */
static inline double
nan_max(double a, double b)
{
    if (a != a) {
        return a;
    }
    if (b != b) {
        return b;
    }
    return a >= b ? a : b;
}

static inline double
quadratic_form(double a00, double a11, double a22, double a01, double a02, double a12,
               double x0, double x1, double x2)
{
    return a00 * x0 * x0 + a11 * x1 * x1 + a22 * x2 * x2
           + 2.0 * (a01 * x0 * x1 + a02 * x0 * x2 + a12 * x1 * x2);
}

/* The closed-form eigen-decomposition of one symmetric matrix (steps 1-3 of
   patches.symmetric_eigen_3x3): eigenvalues[3] (ascending), normal[3] (unit eigenvector of the
   smallest); returns 1 when the row is unsure (np.linalg.eigh decides). */
static inline int
eigen_row(double a00, double a11, double a22, double a01, double a02, double a12,
          double *eigenvalues, double *normal)
{
    /* Rows whose two smallest eigenvalues are closer than close_eigenvalues of the spread of
       all three have a poorly determined normal (points on a line or in one spot): unsure. */
    const double sqrt_3 = 1.7320508075688772, close_eigenvalues = 1e-4;
    /* 1. A = q I + p B with trace(B) = 0. */
    const double q = (a00 + a11 + a22) / 3.0;
    const double b00 = a00 - q, b11 = a11 - q, b22 = a22 - q;
    const double p_sq = (b00 * b00 + b11 * b11 + b22 * b22
                         + 2.0 * (a01 * a01 + a02 * a02 + a12 * a12)) / 6.0;
    const double p = sqrt(p_sq);
    const double det_b = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02)
                          + a02 * (a01 * a12 - b11 * a02));
    const double half_det = det_b / (2.0 * p * p_sq);
    const double clipped = half_det < -1.0 ? -1.0 : (half_det > 1.0 ? 1.0 : half_det);
    const double cos_angle = cos(acos(clipped) / 3.0);
    const int largest_apart = det_b >= 0.0;
    const double apart = q + p * (largest_apart
                                  ? 2.0 * cos_angle
                                  : -cos_angle - sqrt_3 * sqrt(1.0 - cos_angle * cos_angle));
    /* The null vector of A - apart I: the longest cross product of two of its rows. */
    const double c00 = a00 - apart, c11 = a11 - apart, c22 = a22 - apart;
    const double c01 = a01, c02 = a02, c12 = a12;
    const double x01 = c01 * c12 - c02 * c11, y01 = c02 * c01 - c00 * c12,
                 z01 = c00 * c11 - c01 * c01;
    const double x02 = c01 * c22 - c02 * c12, y02 = c02 * c02 - c00 * c22,
                 z02 = c00 * c12 - c01 * c02;
    const double x12 = c11 * c22 - c12 * c12, y12 = c12 * c02 - c01 * c22,
                 z12 = c01 * c12 - c11 * c02;
    const double length_sq_01 = x01 * x01 + y01 * y01 + z01 * z01;
    const double length_sq_02 = x02 * x02 + y02 * y02 + z02 * z02;
    const double length_sq_12 = x12 * x12 + y12 * y12 + z12 * z12;
    const int pick_02 = length_sq_02 > length_sq_01;
    double vx = pick_02 ? x02 : x01, vy = pick_02 ? y02 : y01, vz = pick_02 ? z02 : z01;
    const double length_sq = nan_max(length_sq_01, length_sq_02);
    if (length_sq_12 > length_sq) {
        vx = x12;
        vy = y12;
        vz = z12;
    }
    const double inverse_length = 1.0 / sqrt(nan_max(length_sq, length_sq_12));
    const double v0 = vx * inverse_length, v1 = vy * inverse_length,
                 v2 = vz * inverse_length;

    /* 2. Basis (u, w) of the plane orthogonal to v, and A restricted to it. */
    const int use_x = fabs(v0) > fabs(v1);
    const double scale = 1.0 / sqrt((use_x ? v0 * v0 : v1 * v1) + v2 * v2);
    const double u0 = use_x ? -v2 * scale : 0.0;
    const double u1 = use_x ? 0.0 : v2 * scale;
    const double u2 = (use_x ? v0 : -v1) * scale;
    const double w0 = v1 * u2 - v2 * u1, w1 = v2 * u0 - v0 * u2, w2 = v0 * u1 - v1 * u0;
    const double au0 = a00 * u0 + a01 * u1 + a02 * u2;
    const double au1 = a01 * u0 + a11 * u1 + a12 * u2;
    const double au2 = a02 * u0 + a12 * u1 + a22 * u2;
    const double s00 = u0 * au0 + u1 * au1 + u2 * au2;
    const double s01 = w0 * au0 + w1 * au1 + w2 * au2;
    const double s11 = quadratic_form(a00, a11, a22, a01, a02, a12, w0, w1, w2);
    const double half_difference = 0.5 * (s00 - s11);
    const double radius = sqrt(half_difference * half_difference + s01 * s01);
    const double mean = 0.5 * (s00 + s11);
    const int u_larger = half_difference >= 0.0;
    double c_u = u_larger ? s01 : -(radius - half_difference);
    double c_w = u_larger ? -(half_difference + radius) : s01;
    const double c_scale = 1.0 / sqrt(c_u * c_u + c_w * c_w);
    c_u *= c_scale;
    c_w *= c_scale;

    /* 3. The smallest eigenvalue's eigenvector, and the eigenvalues. */
    const double n0 = largest_apart ? c_u * u0 + c_w * w0 : v0;
    const double n1 = largest_apart ? c_u * u1 + c_w * w1 : v1;
    const double n2 = largest_apart ? c_u * u2 + c_w * w2 : v2;
    const double e0 = quadratic_form(a00, a11, a22, a01, a02, a12, n0, n1, n2);
    const double e1 = largest_apart ? mean + radius : mean - radius;
    const double e2 = largest_apart ? apart : mean + radius;
    normal[0] = n0;
    normal[1] = n1;
    normal[2] = n2;
    eigenvalues[0] = e0;
    eigenvalues[1] = e1;
    eigenvalues[2] = e2;
    return !(e1 - e0 > close_eigenvalues * (e2 - e0)) || !isfinite(n0 + n1 + n2);
}

PyDoc_STRVAR(closed_form_eigen_3x3_doc,
"closed_form_eigen_3x3(a00, a11, a22, a01, a02, a12, eigenvalues, normal, unsure)\n\n"
"patches.symmetric_eigen_3x3 in closed form, for M symmetric 3x3 matrices given by their 6\n"
"distinct entries (M float64 each): eigenvalues (M x 3, ascending), the unit eigenvector of the\n"
"smallest (M x 3) and the rows to recompute with np.linalg.eigh (M bool), written into the\n"
"last three.");

static PyObject *
closed_form_eigen_3x3(PyObject *module, PyObject *args)
{
    PyObject *objects[9];
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &objects[5], &objects[6], &objects[7],
                          &objects[8])) {
        return NULL;
    }
    static const BufferSpec specs[9] = {
        {"a00", 8, 0, -1, 0}, {"a11", 8, 0, 0, 1}, {"a22", 8, 0, 0, 1}, {"a01", 8, 0, 0, 1},
        {"a02", 8, 0, 0, 1}, {"a12", 8, 0, 0, 1}, {"eigenvalues", 8, 1, 0, 3},
        {"normal", 8, 1, 0, 3}, {"unsure", 1, 1, 0, 1}};
    Py_buffer views[9] = {{0}};
    if (get_buffers(objects, views, 9, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t m = items_of(&views[0]);
    const double *A00 = views[0].buf, *A11 = views[1].buf, *A22 = views[2].buf;
    const double *A01 = views[3].buf, *A02 = views[4].buf, *A12 = views[5].buf;
    double *eigenvalues = views[6].buf, *normal = views[7].buf;
    char *unsure = views[8].buf;
    for (Py_ssize_t k = 0; k < m; k++) {
        unsure[k] = (char)eigen_row(A00[k], A11[k], A22[k], A01[k], A02[k], A12[k],
                                    eigenvalues + 3 * k, normal + 3 * k);
    }
    release_all(views, 9);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(plane_fits_doc,
"plane_fits(present, count, z_min, sums, dz_max, min_points, occupied, n, z_min_out,\n"
"           dz_max_out, means, covariances, eigenvalues, normal, unsure) -> cells\n\n"
"From cell_moments' outputs for its C cells (sums: 9 x C): the cells with at least\n"
"min_points ground points, in order, into the first `cells` rows of the outputs (room for C):\n"
"their flat index, point count n (float64), z_min and dz_max, the means of dx, dy, dz\n"
"(C x 3), the 6 covariance entries xx, yy, zz, xy, xz, yz (C x 6), and the closed-form\n"
"eigen-decomposition of that covariance (closed_form_eigen_3x3).");

static PyObject *
plane_fits(PyObject *module, PyObject *args)
{
    PyObject *objects[14];
    long long min_points;
    if (!PyArg_ParseTuple(args, "OOOOOLOOOOOOOOO", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &min_points, &objects[5], &objects[6],
                          &objects[7], &objects[8], &objects[9], &objects[10], &objects[11],
                          &objects[12], &objects[13])) {
        return NULL;
    }
    static const BufferSpec specs[14] = {
        {"present", 8, 0, -1, 0}, {"count", 8, 0, 0, 1}, {"z_min", 8, 0, 0, 1},
        {"sums", 8, 0, 0, 9}, {"dz_max", 8, 0, 0, 1}, {"occupied", 8, 1, 0, 1},
        {"n", 8, 1, 0, 1}, {"z_min_out", 8, 1, 0, 1}, {"dz_max_out", 8, 1, 0, 1},
        {"means", 8, 1, 0, 3}, {"covariances", 8, 1, 0, 6}, {"eigenvalues", 8, 1, 0, 3},
        {"normal", 8, 1, 0, 3}, {"unsure", 1, 1, 0, 1}};
    Py_buffer views[14] = {{0}};
    if (get_buffers(objects, views, 14, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t cells = items_of(&views[0]);
    const int64_t *present = views[0].buf, *count = views[1].buf;
    const double *z_min = views[2].buf, *sums = views[3].buf, *dz_max = views[4].buf;
    int64_t *occupied = views[5].buf;
    double *n_out = views[6].buf, *z_min_out = views[7].buf, *dz_max_out = views[8].buf;
    double *means = views[9].buf, *covariances = views[10].buf;
    double *eigenvalues = views[11].buf, *normal = views[12].buf;
    char *unsure = views[13].buf;
    Py_ssize_t m = 0;
    for (Py_ssize_t c = 0; c < cells; c++) {
        if (count[c] < min_points) {
            continue;
        }
        /* As compute_patches_xyz: sums / n, and E[ab] - E[a] E[b] (dx, dy, dz are small
           numbers relative to the cell, so no cancellation). */
        const double n = (double)count[c];
        const double mean_x = sums[0 * cells + c] / n, mean_y = sums[1 * cells + c] / n,
                     mean_z = sums[2 * cells + c] / n;
        const double cov_xx = sums[3 * cells + c] / n - mean_x * mean_x;
        const double cov_yy = sums[4 * cells + c] / n - mean_y * mean_y;
        const double cov_zz = sums[5 * cells + c] / n - mean_z * mean_z;
        const double cov_xy = sums[6 * cells + c] / n - mean_x * mean_y;
        const double cov_xz = sums[7 * cells + c] / n - mean_x * mean_z;
        const double cov_yz = sums[8 * cells + c] / n - mean_y * mean_z;
        occupied[m] = present[c];
        n_out[m] = n;
        z_min_out[m] = z_min[c];
        dz_max_out[m] = dz_max[c];
        double *mean = means + 3 * m, *cov = covariances + 6 * m;
        mean[0] = mean_x;
        mean[1] = mean_y;
        mean[2] = mean_z;
        cov[0] = cov_xx;
        cov[1] = cov_yy;
        cov[2] = cov_zz;
        cov[3] = cov_xy;
        cov[4] = cov_xz;
        cov[5] = cov_yz;
        unsure[m] = (char)eigen_row(cov_xx, cov_yy, cov_zz, cov_xy, cov_xz, cov_yz,
                                    eigenvalues + 3 * m, normal + 3 * m);
        m++;
    }
    release_all(views, 14);
    return PyLong_FromSsize_t(m);
}

/* Columns of features, as patches.FEATURE_NAMES (checked there at import). */
enum { F_POINT_COUNT, F_HEIGHT_STD, F_HEIGHT_RANGE, F_PLANE_RESIDUAL, F_SLOPE, F_CURVATURE,
       F_MAX_STEP, F_RANGE, F_GRAZING_ANGLE, F_NEIGHBOURHOOD_HEIGHT_STD,
       F_NEIGHBOURHOOD_HEIGHT_RANGE, F_NEIGHBOURHOOD_PLANE_RESIDUAL, F_NEIGHBOURHOOD_CURVATURE,
       N_FEATURES };

static inline double
nan_min(double a, double b)  /* np.minimum */
{
    if (a != a) {
        return a;
    }
    if (b != b) {
        return b;
    }
    return a <= b ? a : b;
}

PyDoc_STRVAR(cell_features_doc,
"cell_features(occupied, n, z_min, dz_max, means, covariances, eigenvalues, normal, ix0, iy0,\n"
"              nx, ny, origin_x, origin_y, origin_z, cell_size, half_width, keys, centres,\n"
"              features) -> keys_ascending\n\n"
"The rest of compute_patches_xyz for plane_fits' M cells (with np.linalg.eigh's results in\n"
"the unsure rows): cell keys (M int64), centres (M x 3) and features (M x 13, in the order\n"
"of patches.FEATURE_NAMES). Returns whether the keys ascend (else the caller sorts).");

static PyObject *
cell_features(PyObject *module, PyObject *args)
{
    PyObject *objects[11];
    long long ix0, iy0, nx, ny, half_width;
    double origin_x, origin_y, origin_z, cell_size;
    if (!PyArg_ParseTuple(args, "OOOOOOOOLLLLddddLOOO", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &objects[5], &objects[6], &objects[7],
                          &ix0, &iy0, &nx, &ny, &origin_x, &origin_y, &origin_z, &cell_size,
                          &half_width, &objects[8], &objects[9], &objects[10])) {
        return NULL;
    }
    static const BufferSpec specs[11] = {
        {"occupied", 8, 0, -1, 0}, {"n", 8, 0, 0, 1}, {"z_min", 8, 0, 0, 1},
        {"dz_max", 8, 0, 0, 1}, {"means", 8, 0, 0, 3}, {"covariances", 8, 0, 0, 6},
        {"eigenvalues", 8, 0, 0, 3}, {"normal", 8, 0, 0, 3}, {"keys", 8, 1, 0, 1},
        {"centres", 8, 1, 0, 3}, {"features", 8, 1, 0, N_FEATURES}};
    Py_buffer views[11] = {{0}};
    if (get_buffers(objects, views, 11, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t m = items_of(&views[0]);
    const int64_t *occupied = views[0].buf;
    const double *n = views[1].buf, *z_min = views[2].buf, *dz_max = views[3].buf;
    const double *means = views[4].buf, *covariances = views[5].buf;
    const double *eigenvalues = views[6].buf, *normal = views[7].buf;
    int64_t *keys = views[8].buf;
    double *centres = views[9].buf, *features = views[10].buf;
    double *gradients = malloc((size_t)(2 * (m > 0 ? m : 1)) * sizeof(double));  /* x, then y */
    int ascending = 1, failed = 0;
    if (gradients == NULL) {
        PyErr_NoMemory();
        failed = 1;
        goto done;
    }
    const double line_limit = (0.1 * cell_size) * (0.1 * cell_size);
    for (Py_ssize_t k = 0; k < m; k++) {
        const double *mean = means + 3 * k, *cov = covariances + 6 * k;
        const double *normal_k = normal + 3 * k;
        double *centre = centres + 3 * k, *feature = features + N_FEATURES * k;
        const double e0 = nan_max(eigenvalues[3 * k], 0.0);
        const double e1 = nan_max(eigenvalues[3 * k + 1], 0.0);
        const double e2 = nan_max(eigenvalues[3 * k + 2], 0.0);
        const double normal_z = fabs(normal_k[2]);
        const int64_t cell_ix = occupied[k] / ny + ix0, cell_iy = occupied[k] % ny + iy0;
        centre[0] = ((double)cell_ix + 0.5) * cell_size;
        centre[1] = ((double)cell_iy + 0.5) * cell_size;
        /* Plane gradient from the normal (near-vertical planes clipped). */
        const double safe_nz = (normal_k[2] < 0 ? -1.0 : 1.0) * nan_max(normal_z, 0.1);
        const double gradient_x = -normal_k[0] / safe_nz, gradient_y = -normal_k[1] / safe_nz;
        gradients[k] = gradient_x;
        gradients[m + k] = gradient_y;
        centre[2] = z_min[k] + mean[2] - gradient_x * mean[0] - gradient_y * mean[1];
        const double horizontal = hypot(centre[0] - origin_x, centre[1] - origin_y);
        feature[F_POINT_COUNT] = n[k];
        feature[F_HEIGHT_STD] = sqrt(nan_max(cov[2], 0.0));
        feature[F_HEIGHT_RANGE] = dz_max[k];
        const double difference = cov[0] - cov[1];
        const double minor_xy = 0.5 * (cov[0] + cov[1])
                                - sqrt(0.25 * (difference * difference) + cov[3] * cov[3]);
        const double residual_var = minor_xy < line_limit ? e0 + e1 : e0;
        feature[F_PLANE_RESIDUAL] = sqrt(residual_var);
        feature[F_SLOPE] = acos(nan_min(normal_z, 1.0));
        feature[F_CURVATURE] = residual_var / nan_max(e0 + e1 + e2, 1e-12);
        feature[F_RANGE] = horizontal;
        feature[F_GRAZING_ANGLE] = atan2(origin_z - centre[2], horizontal);
        /* cell_keys: (ix + 2^30) * 2^31 + (iy + 2^30), wrapping as numpy's int64 does. */
        keys[k] = (int64_t)(((uint64_t)cell_ix + (1ULL << 30)) * (1ULL << 31)
                            + ((uint64_t)cell_iy + (1ULL << 30)));
        if (k > 0 && !(keys[k] > keys[k - 1])) {
            ascending = 0;
        }
    }
    /* The 8-neighbour steps need every centre's height first. */
    if (max_step_core(occupied, m, centres + 2, 3, gradients, gradients + m, nx, ny, cell_size,
                      features + F_MAX_STEP, N_FEATURES) < 0) {
        failed = 1;
        goto done;
    }
    static const int sources[4] = {F_HEIGHT_STD, F_HEIGHT_RANGE, F_PLANE_RESIDUAL,
                                   F_CURVATURE};
    static const int targets[4] = {F_NEIGHBOURHOOD_HEIGHT_STD, F_NEIGHBOURHOOD_HEIGHT_RANGE,
                                   F_NEIGHBOURHOOD_PLANE_RESIDUAL, F_NEIGHBOURHOOD_CURVATURE};
    if (neighbourhood_core(occupied, m, features, N_FEATURES, sources, 4, nx, ny, half_width,
                           features, N_FEATURES, targets) < 0) {
        failed = 1;
    }
done:
    free(gradients);
    release_all(views, 11);
    if (failed) {
        return NULL;
    }
    return PyBool_FromLong(ascending);
}

/* An (N, 3) buffer of native float32 ('f') or float64 ('d') points, any strides: 0, or -1
   with an exception set. */
static int
get_points(PyObject *object, Py_buffer *view)
{
    if (PyObject_GetBuffer(object, view, PyBUF_RECORDS_RO) < 0) {
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (view->ndim != 2 || view->shape[1] != 3
            || !((format[0] == 'f' || format[0] == 'd') && format[1] == '\0')) {
        PyErr_SetString(PyExc_TypeError, "points: expected an (N, 3) float32 or float64 array "
                                         "in native byte order");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Point k of `view` as doubles, and whether it counts as finite: for float64 points the sum
   of the coordinates is tested (NaN and inf propagate, and so does an overflow: what
   Labeler's numpy test does), float32 ones coordinate by coordinate. */
static inline int
read_point(const Py_buffer *view, Py_ssize_t k, double *p)
{
    const char *row = (const char *)view->buf + k * view->strides[0];
    const Py_ssize_t step = view->strides[1];
    if (view->format[0] == 'd') {
        p[0] = *(const double *)row;
        p[1] = *(const double *)(row + step);
        p[2] = *(const double *)(row + 2 * step);
        return isfinite(p[0] + p[1] + p[2]);
    }
    const float x = *(const float *)row, y = *(const float *)(row + step),
                z = *(const float *)(row + 2 * step);
    p[0] = x;
    p[1] = y;
    p[2] = z;
    return isfinite(x) && isfinite(y) && isfinite(z);
}

PyDoc_STRVAR(deskew_points_to_frame_doc,
"deskew_points_to_frame(points, offsets_s, rotation, translation, omega, velocity, middle_s,\n"
"                       x, y, z) -> count\n\n"
"The finite points p of an (N, 3) float32 / float64 sweep (sensor frame), in order, each moved\n"
"with the sensor's constant twist to its firing time offsets_s[k] (N float64, s), into x, y, z\n"
"(float64, room for N). With r = rotation (3 x 3, row-major: target <- sensor at mid-sweep) @ p\n"
"and s = offsets_s[k] - middle_s: r + s (omega x r + velocity) + s^2 / 2 omega x (omega x r)\n"
"+ translation; omega (3,, rad/s) and velocity (3,, m/s) in the target frame.");

static PyObject *
deskew_points_to_frame(PyObject *module, PyObject *args)
{
    PyObject *points, *objects[8];
    double middle_s;
    if (!PyArg_ParseTuple(args, "OOOOOOdOOO", &points, &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &middle_s, &objects[5], &objects[6],
                          &objects[7])) {
        return NULL;
    }
    Py_buffer view;
    if (get_points(points, &view) < 0) {
        return NULL;
    }
    const Py_ssize_t n = view.shape[0];
    const BufferSpec specs[8] = {{"offsets_s", 8, 0, -1, n}, {"rotation", 8, 0, -1, 9},
                                 {"translation", 8, 0, -1, 3}, {"omega", 8, 0, -1, 3},
                                 {"velocity", 8, 0, -1, 3}, {"x", 8, 1, -1, n},
                                 {"y", 8, 1, -1, n}, {"z", 8, 1, -1, n}};
    Py_buffer views[8] = {{0}};
    if (get_buffers(objects, views, 8, specs) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const double *offsets = views[0].buf, *r = views[1].buf, *t = views[2].buf;
    const double *w = views[3].buf, *v = views[4].buf;
    double *x = views[5].buf, *y = views[6].buf, *z = views[7].buf;
    Py_ssize_t written = 0;
    double p[3];
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!read_point(&view, k, p)) {
            continue;
        }
        const double r0 = r[0] * p[0] + r[1] * p[1] + r[2] * p[2];
        const double r1 = r[3] * p[0] + r[4] * p[1] + r[5] * p[2];
        const double r2 = r[6] * p[0] + r[7] * p[1] + r[8] * p[2];
        const double c0 = w[1] * r2 - w[2] * r1, c1 = w[2] * r0 - w[0] * r2,
                     c2 = w[0] * r1 - w[1] * r0;                      /* omega x r */
        const double d0 = w[1] * c2 - w[2] * c1, d1 = w[2] * c0 - w[0] * c2,
                     d2 = w[0] * c1 - w[1] * c0;                      /* omega x (omega x r) */
        const double s = offsets[k] - middle_s, half_s2 = 0.5 * s * s;
        x[written] = r0 + s * (c0 + v[0]) + half_s2 * d0 + t[0];
        y[written] = r1 + s * (c1 + v[1]) + half_s2 * d1 + t[1];
        z[written] = r2 + s * (c2 + v[2]) + half_s2 * d2 + t[2];
        written++;
    }
    release_all(views, 8);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(written);
}

/* Union-find root of k, halving the path on the way. */
static inline int64_t
find_root(int64_t *parent, int64_t k)
{
    while (parent[k] != k) {
        parent[k] = parent[parent[k]];
        k = parent[k];
    }
    return k;
}

PyDoc_STRVAR(smooth_surfaces_doc,
"smooth_surfaces(ix, iy, heights, usable, nx, ny, max_step, labels) -> surfaces\n\n"
"Label per cell (M cells at ix, iy (int64) in an nx x ny grid, heights float64, usable uint8):\n"
"cells joined through 8-neighbours whose heights differ by at most max_step share a label;\n"
"cells not usable are alone. Labels 0 .. surfaces-1 into labels (M int64), in order of each\n"
"surface's first cell.");

static PyObject *
smooth_surfaces(PyObject *module, PyObject *args)
{
    PyObject *objects[5];
    long long nx, ny;
    double max_step;
    if (!PyArg_ParseTuple(args, "OOOOLLdO", &objects[0], &objects[1], &objects[2], &objects[3],
                          &nx, &ny, &max_step, &objects[4])) {
        return NULL;
    }
    static const BufferSpec specs[5] = {{"ix", 8, 0, -1, 0}, {"iy", 8, 0, 0, 1},
                                        {"heights", 8, 0, 0, 1}, {"usable", 1, 0, 0, 1},
                                        {"labels", 8, 1, 0, 1}};
    Py_buffer views[5] = {{0}};
    if (get_buffers(objects, views, 5, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t m = items_of(&views[0]);
    const int64_t *ix = views[0].buf, *iy = views[1].buf;
    const double *heights = views[2].buf;
    const char *usable = views[3].buf;
    int64_t *labels = views[4].buf;
    if (nx <= 0 || ny <= 0 || nx > (1LL << 31) / ny) {
        release_all(views, 5);
        PyErr_SetString(PyExc_ValueError, "smooth_surfaces: grid size out of range");
        return NULL;
    }
    int64_t *grid = malloc((size_t)(nx * ny) * sizeof(int64_t));
    int64_t *parent = malloc((size_t)(m > 0 ? m : 1) * sizeof(int64_t));
    if (grid == NULL || parent == NULL) {
        free(grid);
        free(parent);
        release_all(views, 5);
        return PyErr_NoMemory();
    }
    for (int64_t g = 0; g < nx * ny; g++) {
        grid[g] = -1;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        parent[k] = k;
        if (usable[k] && ix[k] >= 0 && ix[k] < nx && iy[k] >= 0 && iy[k] < ny) {
            grid[ix[k] * ny + iy[k]] = k;
        }
    }
    static const int steps[4][2] = {{1, 0}, {0, 1}, {1, 1}, {1, -1}};
    for (Py_ssize_t k = 0; k < m; k++) {
        if (!usable[k] || ix[k] < 0 || ix[k] >= nx || iy[k] < 0 || iy[k] >= ny) {
            continue;
        }
        for (int d = 0; d < 4; d++) {
            const int64_t jx = ix[k] + steps[d][0], jy = iy[k] + steps[d][1];
            if (jx < 0 || jx >= nx || jy < 0 || jy >= ny) {
                continue;
            }
            const int64_t j = grid[jx * ny + jy];
            if (j < 0 || !(fabs(heights[k] - heights[j]) <= max_step)) {
                continue;
            }
            const int64_t a = find_root(parent, k), b = find_root(parent, j);
            if (a != b) {
                parent[a > b ? a : b] = a < b ? a : b;  /* the first cell's root stays */
            }
        }
    }
    /* Roots are their surface's first cell: numbering in cell order numbers the roots first. */
    int64_t surfaces = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t root = find_root(parent, k);
        labels[k] = root == k ? surfaces++ : labels[root];
    }
    free(grid);
    free(parent);
    release_all(views, 5);
    return PyLong_FromLongLong(surfaces);
}

PyDoc_STRVAR(count_finite_doc,
"count_finite(points) -> int\n\n"
"How many points of an (N, 3) float32 / float64 array (any strides) are finite.");

static PyObject *
count_finite(PyObject *module, PyObject *points)
{
    Py_buffer view;
    if (get_points(points, &view) < 0) {
        return NULL;
    }
    Py_ssize_t finite = 0;
    double p[3];
    for (Py_ssize_t k = 0; k < view.shape[0]; k++) {
        finite += read_point(&view, k, p);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(finite);
}

PyDoc_STRVAR(finite_points_to_frame_doc,
"finite_points_to_frame(points, rotation, translation, x, y, z) -> count\n\n"
"The finite points of an (N, 3) float32 / float64 array, in order, as float64 rotated and\n"
"translated: rotation (3 x 3, row-major) @ p + translation (3,), into x, y, z (room for N):\n"
"row a is rotation[a, 0] * p0 + rotation[a, 1] * p1 + rotation[a, 2] * p2 + translation[a],\n"
"added left to right, as the labeler's numpy code does.");

static PyObject *
finite_points_to_frame(PyObject *module, PyObject *args)
{
    PyObject *points, *objects[5];
    if (!PyArg_ParseTuple(args, "OOOOOO", &points, &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4])) {
        return NULL;
    }
    Py_buffer view;
    if (get_points(points, &view) < 0) {
        return NULL;
    }
    const Py_ssize_t n = view.shape[0];
    const BufferSpec specs[5] = {{"rotation", 8, 0, -1, 9}, {"translation", 8, 0, -1, 3},
                                 {"x", 8, 1, -1, n}, {"y", 8, 1, -1, n}, {"z", 8, 1, -1, n}};
    Py_buffer views[5] = {{0}};
    if (get_buffers(objects, views, 5, specs) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const double *r = views[0].buf, *t = views[1].buf;
    double *x = views[2].buf, *y = views[3].buf, *z = views[4].buf;
    Py_ssize_t written = 0;
    double p[3];
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!read_point(&view, k, p)) {
            continue;
        }
        x[written] = r[0] * p[0] + r[1] * p[1] + r[2] * p[2] + t[0];
        y[written] = r[3] * p[0] + r[4] * p[1] + r[5] * p[2] + t[1];
        z[written] = r[6] * p[0] + r[7] * p[1] + r[8] * p[2] + t[2];
        written++;
    }
    release_all(views, 5);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(written);
}

PyDoc_STRVAR(footprint_update_doc,
"footprint_update(centres, enter, exit, slots, x, y, cos_yaw, sin_yaw, offset_x, half_length,\n"
"                 half_width, t_ns, left) -> count\n\n"
"CellMap.update_footprint's pass over its candidate slots (M int64) of the cell arrays\n"
"centres (C x 3 float64), enter and exit (C int64, -1: not yet), with base_link at (x, y) and\n"
"heading yaw: a cell whose centre is inside the footprint (half_length / half_width around\n"
"offset_x ahead) gets exit = t_ns, and enter = t_ns if not entered yet; an entered cell that\n"
"is no longer inside goes to `left` (room for M, in slot order); returns how many did.");

static PyObject *
footprint_update(PyObject *module, PyObject *args)
{
    PyObject *objects[5];
    double x, y, cos_yaw, sin_yaw, offset_x, half_length, half_width;
    long long t_ns;
    if (!PyArg_ParseTuple(args, "OOOOdddddddLO", &objects[0], &objects[1], &objects[2],
                          &objects[3], &x, &y, &cos_yaw, &sin_yaw, &offset_x, &half_length,
                          &half_width, &t_ns, &objects[4])) {
        return NULL;
    }
    static const BufferSpec specs[5] = {
        {"centres", 8, 0, -1, 0}, {"enter", 8, 1, -1, 0}, {"exit", 8, 1, -1, 0},
        {"slots", 8, 0, -1, 0}, {"left", 8, 1, 3, 1}};
    Py_buffer views[5] = {{0}};
    if (get_buffers(objects, views, 5, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t capacity = items_of(&views[0]) / 3, m = items_of(&views[3]);
    if (items_of(&views[1]) < capacity || items_of(&views[2]) < capacity) {
        PyErr_SetString(PyExc_ValueError, "enter and exit need a slot per centre");
        release_all(views, 5);
        return NULL;
    }
    const double *centres = views[0].buf;
    int64_t *enter = views[1].buf, *exit_ns = views[2].buf, *left = views[4].buf;
    const int64_t *slots = views[3].buf;
    Py_ssize_t count = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        const int64_t slot = slots[k];
        if (slot < 0 || slot >= capacity) {
            PyErr_SetString(PyExc_ValueError, "slot outside the cell arrays");
            release_all(views, 5);
            return NULL;
        }
        /* As CellMap._covered_slots. */
        const double dx = centres[3 * slot] - x, dy = centres[3 * slot + 1] - y;
        const double forward = cos_yaw * dx + sin_yaw * dy - offset_x;
        const double lateral = -sin_yaw * dx + cos_yaw * dy;
        if (fabs(forward) <= half_length && fabs(lateral) <= half_width) {
            if (enter[slot] == -1) {
                enter[slot] = t_ns;
            }
            exit_ns[slot] = t_ns;
        } else if (enter[slot] != -1) {
            left[count++] = slot;
        }
    }
    release_all(views, 5);
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(merge_sightings_doc,
"merge_sightings(features, centres, weight, last_seen, rows, new_features, new_centres,\n"
"                new_weight, source, t_ns)\n\n"
"CellMap.observe's merge of a scan's cells into known ones: for each k, row r = rows[k] of\n"
"the cell arrays (features C x F, centres C x 3, weight, last_seen) and row s = source[k] of\n"
"the scan's (new_features M x F, new_centres M x 3, new_weight): every value becomes\n"
"(old w_old + new w_new) / (w_old + w_new), the weight the sum, last_seen t_ns.");

static PyObject *
merge_sightings(PyObject *module, PyObject *args)
{
    PyObject *objects[9];
    long long t_ns;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOL", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &objects[5], &objects[6], &objects[7],
                          &objects[8], &t_ns)) {
        return NULL;
    }
    static const BufferSpec specs[9] = {
        {"features", 8, 1, -1, 0}, {"centres", 8, 1, -1, 0}, {"weight", 8, 1, -1, 0},
        {"last_seen", 8, 1, -1, 0}, {"rows", 8, 0, -1, 0}, {"new_features", 8, 0, -1, 0},
        {"new_centres", 8, 0, -1, 0}, {"new_weight", 8, 0, -1, 0}, {"source", 8, 0, -1, 0}};
    Py_buffer views[9] = {{0}};
    if (get_buffers(objects, views, 9, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t capacity = views[2].len / 8, scan = views[7].len / 8;
    const Py_ssize_t k_count = views[4].len / 8;
    const Py_ssize_t n_features = capacity ? views[0].len / 8 / capacity : 0;
    if (views[0].len != capacity * n_features * 8 || views[1].len != capacity * 24
            || views[3].len != capacity * 8 || views[5].len != scan * n_features * 8
            || views[6].len != scan * 24 || views[8].len != views[4].len) {
        PyErr_SetString(PyExc_ValueError, "merge_sightings: array sizes do not match");
        release_all(views, 9);
        return NULL;
    }
    double *features = views[0].buf, *centres = views[1].buf, *weight = views[2].buf;
    int64_t *last_seen = views[3].buf;
    const int64_t *rows = views[4].buf, *source = views[8].buf;
    const double *new_features = views[5].buf, *new_centres = views[6].buf,
                 *new_weight = views[7].buf;
    for (Py_ssize_t k = 0; k < k_count; k++) {
        const int64_t r = rows[k], s = source[k];
        if (r < 0 || r >= capacity || s < 0 || s >= scan) {
            PyErr_SetString(PyExc_ValueError, "merge_sightings: row outside the arrays");
            release_all(views, 9);
            return NULL;
        }
        /* As association._weighted_mean: old *= w_old; new *= w_new; old += new; old /= total */
        const double w_old = weight[r], w_new = new_weight[s], total = w_old + w_new;
        for (Py_ssize_t f = 0; f < n_features; f++) {
            double *value = &features[r * n_features + f];
            *value = (*value * w_old + new_features[s * n_features + f] * w_new) / total;
        }
        for (int axis = 0; axis < 3; axis++) {
            double *value = &centres[r * 3 + axis];
            *value = (*value * w_old + new_centres[s * 3 + axis] * w_new) / total;
        }
        weight[r] = total;
        last_seen[r] = t_ns;
    }
    release_all(views, 9);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stale_slots_doc,
"stale_slots(alive, last_seen, enter, before_ns, out) -> count\n\n"
"CellMap.age_out's test: the slots (into out, ascending) of live cells last seen before\n"
"before_ns and not being crossed (enter -1).");

static PyObject *
stale_slots(PyObject *module, PyObject *args)
{
    PyObject *objects[4];
    long long before_ns;
    if (!PyArg_ParseTuple(args, "OOOLO", &objects[0], &objects[1], &objects[2], &before_ns,
                          &objects[3])) {
        return NULL;
    }
    static const BufferSpec specs[4] = {{"alive", 1, 0, -1, 0}, {"last_seen", 8, 0, 0, 1},
                                        {"enter", 8, 0, 0, 1}, {"out", 8, 1, 0, 1}};
    Py_buffer views[4] = {{0}};
    if (get_buffers(objects, views, 4, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t capacity = items_of(&views[0]);
    const char *alive = views[0].buf;
    const int64_t *last_seen = views[1].buf, *enter = views[2].buf;
    int64_t *out = views[3].buf;
    Py_ssize_t count = 0;
    for (Py_ssize_t slot = 0; slot < capacity; slot++) {
        if (alive[slot] && last_seen[slot] < before_ns && enter[slot] == -1) {
            out[count++] = slot;
        }
    }
    release_all(views, 4);
    return PyLong_FromSsize_t(count);
}

/* The sum of a[0 .. n). */
static double
sum_of(const double *a, Py_ssize_t n)
{
    double sum = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        sum += a[i];
    }
    return sum;
}

PyDoc_STRVAR(window_means_doc,
"window_means(values, lo, hi, out)\n\n"
"out[k] = the mean of values[lo[k]:hi[k]] for each window with hi > lo; others\n"
"are left as they are.");

static PyObject *
window_means(PyObject *module, PyObject *args)
{
    PyObject *objects[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objects[0], &objects[1], &objects[2], &objects[3])) {
        return NULL;
    }
    static const BufferSpec specs[4] = {{"values", 8, 0, -1, 0}, {"lo", 8, 0, -1, 0},
                                        {"hi", 8, 0, 1, 1}, {"out", 8, 1, 1, 1}};
    Py_buffer views[4] = {{0}};
    if (get_buffers(objects, views, 4, specs) < 0) {
        return NULL;
    }
    const double *values = views[0].buf;
    const int64_t *lo = views[1].buf, *hi = views[2].buf;
    double *out = views[3].buf;
    const Py_ssize_t n = items_of(&views[0]), windows = items_of(&views[1]);
    for (Py_ssize_t k = 0; k < windows; k++) {
        if (lo[k] < 0 || hi[k] > n) {
            PyErr_SetString(PyExc_ValueError, "window outside the values");
            release_all(views, 4);
            return NULL;
        }
        if (hi[k] > lo[k]) {
            out[k] = sum_of(values + lo[k], hi[k] - lo[k]) / (double)(hi[k] - lo[k]);
        }
    }
    release_all(views, 4);
    Py_RETURN_NONE;
}

static Py_ssize_t
search_sorted(const int64_t *t, Py_ssize_t n, int64_t value, int right)
{
    Py_ssize_t lo = 0, hi = n;  /* np.searchsorted, side 'left' or 'right' */
    while (lo < hi) {
        const Py_ssize_t mid = lo + (hi - lo) / 2;
        if (right ? t[mid] <= value : t[mid] < value) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

PyDoc_STRVAR(window_shocks_doc,
"window_shocks(t, values, valid, t0, t1, max_gap_ns, peak, out, reasons)\n\n"
"VibrationFilter.shocks after its flush, for K windows [t0[k], t1[k]] (ns) over the IMU\n"
"history t (n int64 stamps), values (n float64 m/s^2), valid (n bool, warm-up over): out[k]\n"
"the RMS (peak: largest |value|) of the samples in the window, and\n"
"reasons[k] (int8) 0 when there is a value, 1 pending (the IMU has not reached t1), 2 missing\n"
"(fewer than 2 samples, or the window starts before the history), 3 a gap (a step longer than\n"
"max_gap_ns between the samples around the window), 4 still warming up.");

static PyObject *
window_shocks(PyObject *module, PyObject *args)
{
    PyObject *objects[7];
    long long max_gap_ns;
    int peak;
    if (!PyArg_ParseTuple(args, "OOOOOLpOO", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &max_gap_ns, &peak, &objects[5],
                          &objects[6])) {
        return NULL;
    }
    static const BufferSpec specs[7] = {
        {"t", 8, 0, -1, 0}, {"values", 8, 0, 0, 1}, {"valid", 1, 0, 0, 1}, {"t0", 8, 0, -1, 0},
        {"t1", 8, 0, 3, 1}, {"out", 8, 1, 3, 1}, {"reasons", 1, 1, 3, 1}};
    Py_buffer views[7] = {{0}};
    if (get_buffers(objects, views, 7, specs) < 0) {
        return NULL;
    }
    const int64_t *t = views[0].buf, *t0 = views[3].buf, *t1 = views[4].buf;
    const double *values = views[1].buf;
    const char *valid = views[2].buf;
    double *out = views[5].buf;
    signed char *reasons = views[6].buf;
    const Py_ssize_t n = items_of(&views[0]), windows = items_of(&views[3]);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "window_shocks: empty history");
        release_all(views, 7);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < windows; k++) {
        const Py_ssize_t lo = search_sorted(t, n, t0[k], 0), hi = search_sorted(t, n, t1[k], 1);
        if (t[n - 1] < t1[k]) {
            reasons[k] = 1;
            continue;
        }
        if (hi - lo < 2 || (lo == 0 && t[0] > t0[k])) {
            reasons[k] = 2;
            continue;
        }
        /* The steps between the samples around the window: first = lo - 1 .. last = hi. */
        const Py_ssize_t first = lo > 0 ? lo - 1 : 0, last = hi < n - 1 ? hi : n - 1;
        int gap = 0, warming = 0;
        for (Py_ssize_t i = first; i < last && !gap; i++) {
            gap = t[i + 1] - t[i] > max_gap_ns;
        }
        if (gap) {
            reasons[k] = 3;
            continue;
        }
        for (Py_ssize_t i = lo; i < hi && !warming; i++) {
            warming = !valid[i];
        }
        if (warming) {
            reasons[k] = 4;
            continue;
        }
        reasons[k] = 0;
        const Py_ssize_t count = hi - lo;
        if (peak) {  /* np.max(np.abs(window)): NaN if any */
            double largest = fabs(values[lo]);
            for (Py_ssize_t i = lo + 1; i < hi && largest == largest; i++) {
                const double magnitude = fabs(values[i]);
                largest = magnitude > largest || magnitude != magnitude ? magnitude : largest;
            }
            out[k] = largest;
            continue;
        }
        double sum_sq = 0.0;  /* the root of the mean square */
        for (Py_ssize_t i = lo; i < hi; i++) {
            sum_sq += values[i] * values[i];
        }
        out[k] = sqrt(sum_sq / (double)count);
    }
    release_all(views, 7);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sgd_epoch_doc,
"sgd_epoch(coef, intercept, X, y, sample_weight, eta, alpha) -> intercept\n\n"
"One pass of stochastic gradient descent over the n rows of X (n x d float32), in order,\n"
"for the linear model X coef + intercept with squared loss and an L2 penalty: per row i,\n"
"p = x_i . coef + intercept; the weights shrink by max(0, 1 - eta alpha); then\n"
"u = -eta (p - y_i) sample_weight_i is added as coef += u x_i and intercept += u. coef\n"
"(d float32) is updated in place, the new intercept returned. The arithmetic is float64;\n"
"ValueError if the weights stop being finite.");

static PyObject *
sgd_epoch(PyObject *module, PyObject *args)
{
    PyObject *objects[4];
    double intercept, eta, alpha;
    if (!PyArg_ParseTuple(args, "OdOOOdd", &objects[0], &intercept, &objects[1], &objects[2],
                          &objects[3], &eta, &alpha)) {
        return NULL;
    }
    static const BufferSpec specs[4] = {{"coef", 4, 1, -1, 0}, {"X", 4, 0, 0, 0},
                                        {"y", 4, 0, -1, 0}, {"sample_weight", 4, 0, 2, 1}};
    Py_buffer views[4] = {{0}};
    if (get_buffers(objects, views, 4, specs) < 0) {
        return NULL;
    }
    const Py_ssize_t d = items_of(&views[0]), n = items_of(&views[2]);
    if (items_of(&views[1]) != n * d) {
        PyErr_SetString(PyExc_ValueError, "sgd_epoch: X must have len(y) rows of len(coef)");
        release_all(views, 4);
        return NULL;
    }
    float *coef = views[0].buf;
    const float *X = views[1].buf, *y = views[2].buf, *sample_weight = views[3].buf;
    double *w = malloc((size_t)(d > 0 ? d : 1) * sizeof(double));
    if (w == NULL) {
        release_all(views, 4);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t j = 0; j < d; j++) {
        w[j] = coef[j];
    }
    const double shrink = 1.0 - eta * alpha > 0.0 ? 1.0 - eta * alpha : 0.0;
    int finite = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *x = X + i * d;
        double p = intercept;
        for (Py_ssize_t j = 0; j < d; j++) {
            p += w[j] * x[j];
        }
        double gradient = p - y[i];  /* of the squared loss, clipped as scikit-learn's */
        gradient = gradient < -1e12 ? -1e12 : (gradient > 1e12 ? 1e12 : gradient);
        const double update = -eta * gradient * sample_weight[i];
        for (Py_ssize_t j = 0; j < d; j++) {
            w[j] = w[j] * shrink + update * x[j];
        }
        intercept += update;
    }
    for (Py_ssize_t j = 0; j < d; j++) {
        coef[j] = (float)w[j];
        finite &= isfinite(coef[j]) != 0;
    }
    free(w);
    release_all(views, 4);
    if (!finite || !isfinite(intercept)) {
        PyErr_SetString(PyExc_ValueError, "sgd_epoch: the weights overflowed (learning rate "
                                          "too high for the scale of the inputs?)");
        return NULL;
    }
    return PyFloat_FromDouble(intercept);
}

static PyMethodDef methods[] = {
    {"cell_moments", cell_moments, METH_VARARGS, cell_moments_doc},
    {"closed_form_eigen_3x3", closed_form_eigen_3x3, METH_VARARGS, closed_form_eigen_3x3_doc},
    {"plane_fits", plane_fits, METH_VARARGS, plane_fits_doc},
    {"count_finite", count_finite, METH_O, count_finite_doc},
    {"footprint_update", footprint_update, METH_VARARGS, footprint_update_doc},
    {"merge_sightings", merge_sightings, METH_VARARGS, merge_sightings_doc},
    {"stale_slots", stale_slots, METH_VARARGS, stale_slots_doc},
    {"window_means", window_means, METH_VARARGS, window_means_doc},
    {"window_shocks", window_shocks, METH_VARARGS, window_shocks_doc},
    {"deskew_points_to_frame", deskew_points_to_frame, METH_VARARGS,
     deskew_points_to_frame_doc},
    {"smooth_surfaces", smooth_surfaces, METH_VARARGS, smooth_surfaces_doc},
    {"finite_points_to_frame", finite_points_to_frame, METH_VARARGS,
     finite_points_to_frame_doc},
    {"cell_features", cell_features, METH_VARARGS, cell_features_doc},
    {"sgd_epoch", sgd_epoch, METH_VARARGS, sgd_epoch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled loops of terrain_ssl.core (see terrain_ssl/core/kernels.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModule_Create(&module_definition);
}
