"""The code passes ruff with the repository's configuration (ruff.toml: pyflakes, pycodestyle
errors, 99 columns)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def ruff_command():
    """ruff from this Python's environment (requirements.txt), else from PATH."""
    beside = Path(sys.executable).with_name('ruff')
    if beside.exists():
        return [str(beside)]
    if shutil.which('ruff'):
        return [shutil.which('ruff')]
    pytest.fail('ruff is not installed: pip install -r requirements.txt')


def test_ruff_finds_nothing():
    result = subprocess.run(
        ruff_command() + ['check', '--no-cache', '--config', str(REPO / 'ruff.toml'),
                          'terrain_ssl', 'test', 'bench', 'launch'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
