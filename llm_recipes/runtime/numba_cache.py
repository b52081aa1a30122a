"""Where numba keeps the package's compiled code: the clean stage's kernels (`data/kernels.py`) and the serving
one-row step (`serving/numba_step.py`), in one place.

`NUMBA_CACHE_DIR` where the user sets it; otherwise the user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`,
then `llm_recipes/numba`). Not numba's default: a `__pycache__` beside the package's files when they are writable
(an editable checkout gets compiled files among its sources), else a directory per Python installation. The
user's cache directory works where the package is installed read-only and is shared by every install of one user.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """Where numba keeps the compiled code: NUMBA_CACHE_DIR, or the user's cache directory."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm_recipes" / "numba"


def name_cache_dir() -> None:
    """Points numba at `cache_dir()`. Call before numba is imported: numba reads its settings once, when imported
    (where it is imported already, its settings stay). Sets NUMBA_CACHE_DIR in this process's environment, so
    the processes it starts (clean's workers, the serving engine) use the same directory."""
    if "numba" not in sys.modules and not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir())
