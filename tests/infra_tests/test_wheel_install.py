"""The built wheel, installed into a fresh venv, provides every module from outside the repo.

Folder names (search_spaces/, latency_db/, server/) differ from import names (nasvit.*), so an
editable install or a run from the checkout can hide a package that the wheel lacks. Here the
wheel is built from a copy of the source tree and installed with pip into a new venv that sees
the test environment's dependencies through a plain path entry (.pth lines that only add a
directory do not run the editable install's import hook). Imports then run with ``-I`` from a
temporary directory, and every module must come from the fresh venv.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from nasvit_testing.layout import REPO_ROOT, listed_packages, module_name, source_files

pytestmark = pytest.mark.slow

# Copying the tree keeps setuptools' build/ folder (which can hold stale modules) out of the repo.
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "test-artifacts"
)

# Imported in the fresh venv and reports where each module came from.
_IMPORT_PROBE = """
import importlib, importlib.util, json, sys, traceback
from importlib.metadata import entry_points
report = {"modules": {}, "errors": {}, "top_level": {}, "scripts": {}}
for name in json.loads(sys.argv[1]):
    try:
        module = importlib.import_module(name)
    except BaseException:
        report["errors"][name] = traceback.format_exc()
        continue
    search_path = list(getattr(module, "__path__", []))
    report["modules"][name] = [getattr(module, "__file__", None), search_path]
for name in ("server", "search_spaces", "latency_db"):
    report["top_level"][name] = importlib.util.find_spec(name) is not None
for script in entry_points(group="console_scripts", name="nasvit"):
    report["scripts"][script.name] = script.value
    if json.loads(sys.argv[2]):
        try:
            report["scripts"]["loaded"] = callable(script.load())
        except BaseException:
            report["errors"][script.value] = traceback.format_exc()
print(json.dumps(report))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    names: frozenset[str]
    python: Path
    site_packages: Path
    workdir: Path


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, **kwargs
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_COPIED)
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source])
    (wheel,) = dist.glob("nasvit-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    where = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    site_packages = Path(where.stdout.strip())
    dependency_dirs = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "_test_dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])

    workdir = base / "elsewhere"
    workdir.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        names = frozenset(archive.namelist())
    yield Installed(wheel, names, python, site_packages.resolve(), workdir)


def _importable_modules(names: frozenset[str]) -> list[str]:
    """Every module in the wheel, less those that act on import: ``__main__`` and Alembic's
    migration environment and version scripts (they need a running Alembic context)."""
    modules = []
    for name in sorted(names):
        path = PurePosixPath(name)
        if path.suffix != ".py" or path.name == "__main__.py" or "migrations" in path.parts:
            continue
        modules.append(module_name(name))
    return modules


def test_wheel_holds_only_the_nasvit_namespace(installed: Installed) -> None:
    top_level = {PurePosixPath(name).parts[0] for name in installed.names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - dist_info == {"nasvit"}, (
        f"the wheel installs top-level names {sorted(top_level - dist_info)}; only 'nasvit' is "
        "allowed (folders map onto nasvit.* via [tool.setuptools.package-dir])"
    )


def test_wheel_ships_every_source_module_and_data_file(installed: Installed) -> None:
    missing = [source for source in source_files() if source.wheel_path not in installed.names]
    hints = []
    for source in missing:
        relative = source.path.relative_to(REPO_ROOT)
        if source.module is not None:
            package = source.module if source.is_package else source.module.rpartition(".")[0]
            hint = f"list '{package}' in [tool.setuptools] packages"
        else:
            hint = "add a pattern to [tool.setuptools.package-data]"
        hints.append(f"{relative} -> {source.wheel_path}: {hint}")
    assert not hints, "missing from the wheel (fix pyproject.toml):\n" + "\n".join(hints)


def test_wheel_declares_the_console_script(installed: Installed) -> None:
    (entry_points,) = (n for n in installed.names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(installed.wheel) as archive:
        text = archive.read(entry_points).decode()
    assert "nasvit = nasvit.cli:main" in text


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    modules = _importable_modules(installed.names)
    # Namespace packages (folders without __init__.py) are checked through their __path__.
    modules += [package for package in listed_packages() if package not in modules]
    has_cli = "nasvit/cli/__init__.py" in installed.names
    probe = _run(
        [installed.python, "-I", "-c", _IMPORT_PROBE, json.dumps(modules), json.dumps(has_cli)],
        cwd=installed.workdir,
    )
    report = json.loads(probe.stdout.splitlines()[-1])

    assert not report["errors"], "imports failed in a fresh venv:\n" + "\n".join(
        f"--- {name}\n{error}" for name, error in report["errors"].items()
    )
    outside = {}
    for name, (file, search_path) in report["modules"].items():
        for location in [file, *search_path] if file else search_path:
            if not Path(location).resolve().is_relative_to(installed.site_packages):
                outside[name] = location
    assert not outside, f"modules not loaded from the wheel: {outside}"
    assert set(report["modules"]) == set(modules)
    assert not any(report["top_level"].values()), report["top_level"]
    assert report["scripts"].get("nasvit") == "nasvit.cli:main"
    if has_cli:
        assert report["scripts"].get("loaded") is True, "nasvit.cli:main is not callable"
