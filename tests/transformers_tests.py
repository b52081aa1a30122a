"""transformers' own model-test machinery, fetched at test time from the package registry.

The source distribution of the installed transformers release carries `tests/test_modeling_common.py`
(`ModelTesterMixin`); nothing of it is copied into this repository. (Its `test_configuration_common.py`
imports `tests/utils/`, which the distribution lacks, so `ConfigTester` is not used.) It lacks two files that
`test_modeling_common.py` imports: `tests/generation/test_utils.py` (`GenerationTesterMixin`) and
`tests/exporters/test_export.py` (`ExportTesterMixin`). In their place the extracted package gets modules that
import our own tests of the same behaviours (`recipe_gpt_mixins.py`), so nothing of transformers' suite is faked:
the generation and export checks that run are ours and say so.

`load()` returns the extracted package name (importable), or None with the reason when the registry cannot be
reached and nothing is cached; the caller skips then.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "hf_transformers_tests"
# files of the source distribution that `test_modeling_common.py` needs, and our stand-ins for the ones it lacks
FROM_SDIST = ("test_modeling_common.py",)
STAND_INS = {
    "generation/test_utils.py": "from recipe_gpt_mixins import GenerationTesterMixin  # noqa: F401\n",
    "exporters/test_export.py": "from recipe_gpt_mixins import ExportTesterMixin  # noqa: F401\n",
}


def cache_dir(version: str) -> Path:
    root = Path(os.environ.get("LLM_RECIPES_CACHE", Path.home() / ".cache" / "llm_recipes"))
    return root / "transformers-tests" / version


def _download_sdist(version: str, into: Path) -> Path:
    """`pip download` of the source distribution (about 11 MB); the registry is the one pip is set up for."""
    into.mkdir(parents=True, exist_ok=True)
    found = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", f"transformers=={version}", "-d", str(into)],
            check=True, capture_output=True, text=True, timeout=300,
        )
        found = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip wrote no transformers-{version}.tar.gz into {into}")
    return found[0]


def _extract(sdist: Path, package_dir: Path) -> None:
    """tests/*.py of the sdist into a package (written beside, then renamed: a killed run leaves no half copy)."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=package_dir.parent))
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts  # transformers-X/tests/<file>
            if len(parts) == 3 and parts[1] == "tests" and parts[2] in FROM_SDIST and member.isfile():
                (tmp / parts[2]).write_bytes(archive.extractfile(member).read())
    missing = [name for name in FROM_SDIST if not (tmp / name).exists()]
    if missing:
        raise FileNotFoundError(f"{sdist.name} has no tests/{', tests/'.join(missing)}")
    (tmp / "__init__.py").write_text("")
    for relative, text in STAND_INS.items():
        path = tmp / relative
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").write_text("")
        path.write_text("# not in transformers' source distribution: llm_recipes' own tests of the same behaviours\n"
                        f"{text}")
    os.replace(tmp, package_dir)


def load() -> tuple[str | None, str]:
    """(package name, where it came from) or (None, why not)."""
    import transformers

    version = transformers.__version__
    root = cache_dir(version)
    package_dir = root / PACKAGE
    try:
        if not package_dir.exists():
            _extract(_download_sdist(version, root), package_dir)
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        return None, f"transformers {version} source distribution not available: {detail.strip()[-300:]}"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.import_module(PACKAGE)
    return PACKAGE, f"transformers {version} tests from {package_dir}"
