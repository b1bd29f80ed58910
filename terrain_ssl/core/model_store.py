"""Model files: numpy arrays plus JSON metadata in one .npz, written atomically, read without
pickle.

One file, not an .npz beside a .json, so a single rename replaces the whole model at once. The
metadata travels inside the archive as UTF-8 JSON bytes (a uint8 array named ``__meta__``).
Writing: temp file in the same directory, fsync, os.replace, fsync the directory; a crash at
any moment leaves either the old file or the new one, never a mix. Reading never unpickles
(``allow_pickle=False``) and reads every array so the zip CRC catches flipped bytes; anything
wrong becomes a `ModelFileError` that says which file and why.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile

import numpy as np

__all__ = ['ModelFileError', 'save_model_file', 'load_model_file', 'quarantine_model_file']

_META_KEY = '__meta__'


class ModelFileError(Exception):
    """A model file that cannot be used: missing, truncated, corrupt or incompatible."""


def save_model_file(path: str, arrays: dict, meta: dict) -> None:
    """Atomically write `arrays` (name -> numpy array) and `meta` (JSON-able dict) to `path`.

    Object arrays are refused (they would need pickle to load). The parent directory is created.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if _META_KEY in arrays:
        raise ValueError(f'array name {_META_KEY!r} is reserved for the metadata')
    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise ValueError(f'array {name!r} holds Python objects; only plain arrays are stored')
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode('utf-8'), dtype=np.uint8)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                                         suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as stream:
            np.savez(stream, **{_META_KEY: meta_bytes}, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def load_model_file(path: str) -> tuple:
    """Read `(arrays, meta)` written by `save_model_file`; raises ModelFileError on any problem."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ModelFileError(f'model file {path} is a bare .npy array, not a model '
                                     'archive')
            if _META_KEY not in archive.files:
                raise ModelFileError(f'model file {path} has no metadata ({_META_KEY} missing)')
            arrays = {name: archive[name] for name in archive.files}  # reads all: CRC checked
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(f'model file {path} does not exist') from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as error:
        raise ModelFileError(
            f'model file {path} is truncated or corrupt ({type(error).__name__}: '
            f'{error})') from None
    meta_bytes = arrays.pop(_META_KEY)
    try:
        meta = json.loads(meta_bytes.tobytes().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f'model file {path} has unreadable metadata ({error})') from None
    if not isinstance(meta, dict):
        raise ModelFileError(f'model file {path} metadata is not a JSON object')
    return arrays, meta


def quarantine_model_file(path: str) -> str:
    """Rename a bad model file aside (``<path>.bad-<UTC time>``) and return the new name.

    The bad file is kept for inspection and is never overwritten; the original name becomes
    free for a fresh model. Raises OSError when the rename is impossible (e.g. read-only dir).
    """
    path = os.path.abspath(os.path.expanduser(path))
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = f'{path}.bad-{stamp}'
    suffix = 1
    while os.path.exists(target):
        target = f'{path}.bad-{stamp}-{suffix}'
        suffix += 1
    os.rename(path, target)
    _fsync_directory(os.path.dirname(path))
    return target


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); harmless no-op where directories cannot be
    opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
