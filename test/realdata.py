"""Where the real recordings are (../shared/realdata beside the repository, or /work/shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (REPO.parent / 'shared' / 'realdata', Path('/work/shared/realdata'))


def realdata_root():
    """The first realdata folder that exists, or None."""
    for candidate in CANDIDATES:
        if candidate.is_dir():
            return candidate
    return None


def realdata(*parts) -> Path:
    """Path of a real recording under realdata/; skips the test when it is not there."""
    root = realdata_root()
    if root is None:
        pytest.skip('real recordings not found in ' + ' or '.join(map(str, CANDIDATES)))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} not found')
    return path
