"""The built-in `python-docs` corpus: documentation that ships with the local Python installation.

Docstrings are read from source files with `ast`, never by importing them: importing every standard
library module has side effects (`antigravity` opens a browser, `this` prints, `tkinter` needs a
display) and importing torch or transformers takes seconds and gigabytes. Modules written in C
(`builtins`, `math`, `itertools`, ...) have no source, so those few are imported and read with
`inspect`. The pydoc topics (`pydoc_data.topics`: the language reference pages behind `help("for")`)
come as extra documents.

Each document's text is the cleaned docstring exactly as written (`inspect.cleandoc`), so its first
paragraph is the summary line; `title` is the qualified name (`os.path.join`) or `pydoc topic: <name>`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Standard-library folders that hold tests, demos, GUI tools or vendored legacy code rather than
# documentation of the library people use.
STDLIB_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
               "dist-packages", "__pycache__", "pydoc_data", "venv", "config-3", "unittest/test", "distutils"}
PACKAGE_SKIP_PARTS = {"test", "tests", "testing", "_vendor", "vendored", "benchmarks", "examples", "__pycache__"}
STDLIB_LICENSE = "PSF-2.0"


@dataclass
class DocRecord:
    """One docstring or pydoc topic, with its provenance."""

    text: str
    title: str
    location: str
    license: str


def _public(name: str) -> bool:
    return not name.startswith("_")


def _docstrings_from_tree(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    """Yields (qualified name, cleaned docstring) for a module and its public classes and functions."""
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield module, doc

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _public(child.name):
                qualname = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield qualname, doc
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, qualname)

    yield from walk(tree, module)


def docstrings_from_file(path: str, module: str, license: str, min_chars: int) -> list[DocRecord]:
    """Parses one .py file; a file that does not parse (Python 2 leftovers, templates) yields nothing."""
    try:
        source = Path(path).read_bytes()
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    return [DocRecord(text=doc, title=qualname, location=f"python:{qualname}", license=license)
            for qualname, doc in _docstrings_from_tree(tree, module) if len(doc) >= min_chars]


def _module_name(root: Path, path: Path, prefix: str = "") -> str | None:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts and not prefix:
        return None
    if any(not p.isidentifier() for p in parts):
        return None
    return ".".join([prefix, *parts] if prefix else parts)


def stdlib_files() -> list[tuple[str, str]]:
    """(path, module name) of the public pure-Python standard library, sorted for a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames
                             if d not in STDLIB_SKIP and f"{rel}/{d}".lstrip("./") not in STDLIB_SKIP
                             and not d.startswith(("_", "config-", "plat-")))
        for name in sorted(filenames):
            if not name.endswith(".py") or (name.startswith("_") and name != "__init__.py"):
                continue
            module = _module_name(root, Path(dirpath) / name)
            if module:
                found.append((str(Path(dirpath) / name), module))
    return sorted(found, key=lambda item: item[1])


def package_files(package: str) -> list[tuple[str, str]]:
    """(path, module name) of an installed package's public modules; empty when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        found = []
        for location in spec.submodule_search_locations:
            root = Path(location)
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames
                                     if d not in PACKAGE_SKIP_PARTS and not d.startswith((".", "_")))
                for name in sorted(filenames):
                    if name.endswith(".py") and (not name.startswith("_") or name == "__init__.py"):
                        module = _module_name(root, Path(dirpath) / name, prefix=package)
                        if module:
                            found.append((str(Path(dirpath) / name), module))
        return sorted(found, key=lambda item: item[1])
    if spec.origin and spec.origin.endswith(".py"):
        return [(spec.origin, package)]
    return []


def package_license(package: str) -> str:
    """The license an installed distribution declares (SPDX expression where given), or ''."""
    from importlib import metadata

    try:
        dists = metadata.packages_distributions().get(package, [package])
        meta = metadata.metadata(dists[0])
    except (metadata.PackageNotFoundError, IndexError):
        return ""
    expression = meta.get("License-Expression")
    if expression:
        return expression
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return classifiers[0]
    license = (meta.get("License") or "").strip()
    return license.splitlines()[0][:64] if license else ""


def builtin_docstrings(min_chars: int) -> list[DocRecord]:
    """Docstrings of the standard-library modules written in C (no .py source to parse)."""
    names = set(sys.builtin_module_names)
    dynload = Path(sysconfig.get_paths()["platstdlib"]) / "lib-dynload"
    stdlib_dynload = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    for folder in (dynload, stdlib_dynload):
        if folder.is_dir():
            names.update(p.name.split(".")[0] for p in folder.iterdir() if p.suffix == ".so")
    records = []
    for module_name in sorted(n for n in names if _public(n) and n not in {"xxsubtype", "xxlimited", "xxlimited_35"}
                              and not n.startswith("xx")):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # a C module may need a system library that is absent
            continue
        records.extend(_inspect_docs(module, module_name, min_chars))
    return records


def _inspect_docs(module, module_name: str, min_chars: int) -> list[DocRecord]:
    out = []

    def add(qualname: str, obj) -> None:
        doc = inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""
        if len(doc) >= min_chars:
            out.append(DocRecord(text=doc, title=qualname, location=f"python:{qualname}", license=STDLIB_LICENSE))

    add(module_name, module)
    for name, obj in sorted(vars(module).items()):
        if not _public(name) or getattr(obj, "__module__", module_name) not in (module_name, None):
            continue
        if inspect.isclass(obj) or inspect.isbuiltin(obj) or inspect.isroutine(obj):
            add(f"{module_name}.{name}", obj)
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if _public(attr) and (inspect.isroutine(member) or inspect.isdatadescriptor(member)):
                    add(f"{module_name}.{name}.{attr}", member)
    return out


def pydoc_topics(min_chars: int) -> list[DocRecord]:
    """The pydoc topics: language reference sections that `help("with")` shows."""
    import pydoc_data.topics

    return [DocRecord(text=text.strip(), title=f"pydoc topic: {name}", location=f"python:pydoc_data.topics/{name}",
                      license=STDLIB_LICENSE)
            for name, text in sorted(pydoc_data.topics.topics.items()) if len(text.strip()) >= min_chars]


def _parse_job(job: tuple[str, str, str, int]) -> list[DocRecord]:
    return docstrings_from_file(*job)


def iter_python_docs(packages: list[str] | None = None, stdlib: bool = True, topics: bool = True,
                     min_chars: int = 80, num_proc: int = 1) -> Iterator[DocRecord]:
    """Yields the python-docs corpus in a fixed order: pydoc topics, C modules, standard library, packages.

    Args:
        packages: installed top-level packages whose docstrings to add (e.g. `["numpy", "torch"]`);
            a package that is not installed is skipped with a warning.
        stdlib: include the standard library's docstrings.
        topics: include the pydoc topics.
        min_chars: shortest docstring kept; one-line docstrings say little.
        num_proc: processes that parse source files (order is kept, so a resumed run sees the same stream).
    """
    if topics:
        yield from pydoc_topics(min_chars)
    jobs: list[tuple[str, str, str, int]] = []
    if stdlib:
        yield from builtin_docstrings(min_chars)
        jobs += [(path, module, STDLIB_LICENSE, min_chars) for path, module in stdlib_files()]
    for package in packages or []:
        files = package_files(package)
        if not files:
            print(f"python-docs: package {package!r} is not installed (or has no Python source); skipped",
                  file=sys.stderr)
            continue
        license = package_license(package)
        jobs += [(path, module, license, min_chars) for path, module in files]
    if num_proc > 1 and len(jobs) > 50:
        import multiprocessing

        # fork: spawned workers would re-import llm_recipes (and with it torch) before parsing anything
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(num_proc) as pool:
            for records in pool.imap(_parse_job, jobs, chunksize=16):
                yield from records
    else:
        for job in jobs:
            yield from _parse_job(job)
