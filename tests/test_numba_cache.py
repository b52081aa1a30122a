"""Both numba users (the clean stage's kernels, the serving one-row step) keep compiled code in one directory:
NUMBA_CACHE_DIR where set, else the user's cache directory, never beside the package's files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from llm_recipes.runtime.numba_cache import cache_dir

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")

PROBE = """
import json, sys
import llm_recipes.serving.numba_step  # names the directory before it imports numba
import numba
from llm_recipes.runtime.numba_cache import cache_dir
print(json.dumps({"numba": str(numba.config.CACHE_DIR), "clean": str(cache_dir())}))
"""


def _probe(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_numba
def test_serving_step_and_clean_kernels_share_the_users_cache_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    expected = str(tmp_path / "xdg" / "llm_recipes" / "numba")
    assert _probe(env) == {"numba": expected, "clean": expected}


@needs_numba
def test_numba_cache_dir_set_by_the_user_wins(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert _probe(env) == {"numba": str(tmp_path / "mine"), "clean": str(tmp_path / "mine")}


def test_cache_directory_is_the_users(monkeypatch, tmp_path):
    """numba's cache goes where NUMBA_CACHE_DIR says, otherwise under the user's cache directory (not next to
    the package, which may be installed read-only)."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "llm_recipes" / "numba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "llm_recipes" / "numba"
