"""Fixtures for the device agent: a fresh virtual environment holding only numpy and
onnxruntime (what a device installs; no torch), the agent zipapp, and helpers that run the
agent from that environment as a separate process.

The environment is created once per session with the interpreter running the tests, without
pip of its own (pip is the installer, not part of the agent's install: the packages go in with
this interpreter's pip through ``pip --python``, from pip's cache when it has them), and
without precompiled bytecode (Python writes what the agent imports on first use). Its numpy and
onnxruntime are the versions the tests run with. If it cannot be created the tests skip on a
developer's machine and fail in CI (``nasvit_testing.availability.unavailable``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from nasvit.agent.bundle import build_zipapp

from nasvit_testing.availability import unavailable

#: What the agent's environment holds, at the versions of the test environment.
AGENT_PACKAGES = ("numpy", "onnxruntime")


@dataclass(frozen=True)
class AgentVenv:
    """A torch-free virtual environment and the agent zipapp to run in it."""

    root: Path
    python: Path
    bundle: Path

    def env(self) -> dict[str, str]:
        """The agent process's environment: nothing of the test environment's Python paths or
        nasvit settings; one OpenMP thread (the machine is shared with the server)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NASVIT_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["OMP_NUM_THREADS"] = "1"
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``python nasvit-agent.pyz ARGS`` to completion."""
        return subprocess.run(
            [str(self.python), str(self.bundle), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )

    def run_python(self, code: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -c CODE`` in the environment."""
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=300,
        )

    def start(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """Start the agent in the background, its output going to ``log``."""
        with log.open("wb") as out:
            return subprocess.Popen(
                [str(self.python), str(self.bundle), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )

    def size_bytes(self) -> int:
        """Disk space the environment's files take (allocated blocks, as ``du`` counts them;
        links not followed)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = Path(folder) / name
                if not path.is_symlink():
                    stat = path.stat()
                    total += max(stat.st_blocks * 512, stat.st_size)
        return total


def _create(root: Path) -> Path:
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    pins = [f"{name}=={version(name)}" for name in AGENT_PACKAGES]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-compile", *pins],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return python


@pytest.fixture(scope="session")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> AgentVenv:
    """A fresh venv with numpy and onnxruntime only, and the zipapp next to it."""
    folder = tmp_path_factory.mktemp("agent-venv")
    root = folder / "venv"
    try:
        python = _create(root)
    except subprocess.CalledProcessError as error:
        unavailable(
            f"cannot create the agent's venv: {' '.join(map(str, error.cmd[:5]))} ... failed: "
            f"{(error.stderr or '').strip()[-1500:]}"
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"cannot create the agent's venv: {error}")
    bundle = folder / "nasvit-agent.pyz"
    bundle.write_bytes(build_zipapp())
    return AgentVenv(root=root, python=python, bundle=bundle)
