"""Lidar scans from files: PCD (ascii, binary), PLY (ascii, binary), KITTI .bin, .npy.

`read_scan(path)` -> (N, 3) float64 x, y, z (m) in the file's frame. Small readers of our own:
the formats are simple, and no point-cloud library is needed for them. A file that cannot be
read raises ScanFileError with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCAN_SUFFIXES = ('.pcd', '.ply', '.bin', '.npy')
_PCD_TYPES = {('F', 4): 'f4', ('F', 8): 'f8', ('I', 1): 'i1', ('I', 2): 'i2', ('I', 4): 'i4',
              ('I', 8): 'i8', ('U', 1): 'u1', ('U', 2): 'u2', ('U', 4): 'u4', ('U', 8): 'u8'}
_PLY_TYPES = {'char': 'i1', 'int8': 'i1', 'uchar': 'u1', 'uint8': 'u1', 'short': 'i2',
              'int16': 'i2', 'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4',
              'uint': 'u4', 'uint32': 'u4', 'float': 'f4', 'float32': 'f4', 'double': 'f8',
              'float64': 'f8'}


class ScanFileError(ValueError):
    """A scan file that cannot be read (the message says why, in one line)."""


def read_scan(path) -> np.ndarray:
    """(N, 3) float64 points of a .pcd, .ply, KITTI .bin (float32 x, y, z, intensity) or .npy
    ((N, >= 3) numbers, or a structured array with x, y, z fields) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SCAN_SUFFIXES:
        raise ScanFileError(f'{path}: unknown scan format {suffix!r} '
                            f'(expected one of {", ".join(SCAN_SUFFIXES)})')
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ScanFileError(f'{path}: {error.strerror or error}') from error
    try:
        if suffix == '.pcd':
            return _read_pcd(data)
        if suffix == '.ply':
            return _read_ply(data)
        if suffix == '.bin':
            if len(data) % 16:
                raise ScanFileError(f'{len(data)} bytes is not a whole number of KITTI points '
                                    '(16 bytes: float32 x, y, z, intensity)')
            return np.frombuffer(data, dtype='<f4').reshape(-1, 4)[:, :3].astype(np.float64)
        return _read_npy(path)
    except ScanFileError as error:
        raise ScanFileError(f'{path}: {error}') from None
    except (ValueError, IndexError, KeyError) as error:
        raise ScanFileError(f'{path}: malformed {suffix[1:].upper()} file ({error})') from None


def _header_lines(data: bytes, end_marker: bytes, max_lines: int = 64):
    """(header lines as str, offset of the data after the marker line)."""
    lines, offset = [], 0
    for _ in range(max_lines):
        newline = data.find(b'\n', offset)
        if newline < 0:
            break
        line = data[offset:newline].decode('ascii', errors='replace').strip()
        offset = newline + 1
        if line and not line.startswith('#') and not line.startswith('comment'):
            lines.append(line)
        if line.startswith(end_marker.decode()):
            return lines, offset
    raise ScanFileError(f'no {end_marker.decode()!r} line in the header')


def _read_pcd(data: bytes) -> np.ndarray:
    lines, offset = _header_lines(data, b'DATA')
    header = {line.split()[0].upper(): line.split()[1:] for line in lines}
    names = header['FIELDS']
    sizes = [int(v) for v in header['SIZE']]
    types = header['TYPE']
    counts = [int(v) for v in header.get('COUNT', ['1'] * len(names))]
    points = int(header['POINTS'][0]) if 'POINTS' in header else (
        int(header['WIDTH'][0]) * int(header.get('HEIGHT', ['1'])[0]))
    mode = header['DATA'][0].lower()
    if not {'x', 'y', 'z'} <= set(names):
        raise ScanFileError(f'no x/y/z fields (fields: {names})')
    if mode == 'ascii':
        text = data[offset:].decode('ascii', errors='replace').split()
        width = sum(counts)
        values = np.array(text[:points * width], dtype=np.float64).reshape(points, width)
        starts = np.cumsum([0] + counts[:-1])
        return values[:, [starts[names.index(axis)] for axis in 'xyz']]
    if mode != 'binary':
        raise ScanFileError(f'DATA {mode} is not supported (ascii or binary; save the cloud '
                            'uncompressed)')
    formats = []
    for name, size, kind, count in zip(names, sizes, types, counts):
        code = _PCD_TYPES.get((kind.upper(), size))
        if code is None:
            raise ScanFileError(f'field {name}: TYPE {kind} SIZE {size} is unknown')
        formats.append(('<' + code, (count,)) if count > 1 else '<' + code)
    unique = [name if name != '_' else f'_pad{index}' for index, name in enumerate(names)]
    dtype = np.dtype({'names': unique, 'formats': formats})
    if len(data) - offset < points * dtype.itemsize:
        raise ScanFileError(f'{points} points need {points * dtype.itemsize} bytes of data, '
                            f'the file has {len(data) - offset}')
    array = np.frombuffer(data, dtype=dtype, count=points, offset=offset)
    return np.column_stack([array[axis].astype(np.float64) for axis in 'xyz'])


def _read_ply(data: bytes) -> np.ndarray:
    lines, offset = _header_lines(data, b'end_header', max_lines=256)
    if not lines or lines[0] != 'ply':
        raise ScanFileError('not a PLY file (no "ply" on the first line)')
    fmt = next((line.split()[1] for line in lines if line.startswith('format')), None)
    elements, current = [], None
    for line in lines:
        words = line.split()
        if words[0] == 'element':
            current = (words[1], int(words[2]), [])
            elements.append(current)
        elif words[0] == 'property' and current is not None:
            if words[1] == 'list':
                raise ScanFileError(f'element {current[0]} has a list property: only the '
                                    'vertex element is read, and it must come first')
            current[2].append((words[2], _PLY_TYPES[words[1]]))
    if not elements or elements[0][0] != 'vertex':
        raise ScanFileError('the first element is not "vertex"')
    _, count, properties = elements[0]
    names = [name for name, _ in properties]
    if not {'x', 'y', 'z'} <= set(names):
        raise ScanFileError(f'vertex has no x/y/z properties ({names})')
    if fmt == 'ascii':
        rows = data[offset:].decode('ascii', errors='replace').split('\n')[:count]
        values = np.array([row.split()[:len(names)] for row in rows], dtype=np.float64)
        return values[:, [names.index(axis) for axis in 'xyz']]
    order = {'binary_little_endian': '<', 'binary_big_endian': '>'}.get(fmt)
    if order is None:
        raise ScanFileError(f'format {fmt} is unknown')
    dtype = np.dtype([(name, order + code) for name, code in properties])
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return np.column_stack([array[axis].astype(np.float64) for axis in 'xyz'])


def _read_npy(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.dtype.names:
        if not {'x', 'y', 'z'} <= set(array.dtype.names):
            raise ScanFileError(f'structured array without x/y/z fields ({array.dtype.names})')
        return np.column_stack([array[axis].ravel().astype(np.float64) for axis in 'xyz'])
    if array.ndim != 2 or array.shape[1] < 3 or array.dtype.kind not in 'fiu':
        raise ScanFileError(f'expected an (N, >=3) numeric array, got {array.shape} '
                            f'{array.dtype}')
    return array[:, :3].astype(np.float64)


__all__ = ['SCAN_SUFFIXES', 'ScanFileError', 'read_scan']
