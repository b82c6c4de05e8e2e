"""The agent's install: a fresh venv with numpy and onnxruntime only (no torch) stays under
150 MB, and the zipapp the server serves runs there."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from nasvit.agent.bundle import agent_sources, build_zipapp

from nasvit_testing.ports import free_port

if TYPE_CHECKING:
    from .conftest import AgentVenv

#: The issue's target for the agent's install on a device: 150 MB (the stricter, decimal
#: reading).
MAX_INSTALL_BYTES = 150 * 10**6


def test_the_zipapp_holds_the_agent_package_and_nothing_else() -> None:
    data = build_zipapp()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(archive.namelist())
        assert archive.read("nasvit/__init__.py") == b""
        for source in agent_sources():
            assert archive.read(f"nasvit/agent/{source.name}") == source.read_bytes()
        main = archive.read("__main__.py").decode()
    expected = ["__main__.py", "nasvit/__init__.py"]
    expected += [f"nasvit/agent/{source.name}" for source in agent_sources()]
    assert names == sorted(expected)
    assert {"runner.py", "client.py", "timing.py", "__main__.py"} <= {
        source.name for source in agent_sources()
    }
    assert "nasvit.agent.__main__" in main
    # The same sources give the same bytes (a device can compare what it downloaded).
    assert build_zipapp() == data


def test_the_venv_holds_no_torch_and_stays_under_150_mb(agent_venv: AgentVenv) -> None:
    imported = agent_venv.run_python(
        "import numpy, onnxruntime; print(numpy.__version__, onnxruntime.__version__)"
    )
    assert imported.returncode == 0, imported.stderr
    for foreign in ("torch", "onnx", "httpx"):
        probe = agent_venv.run_python(f"import {foreign}")
        assert probe.returncode != 0, f"{foreign} is importable in the agent's venv"
        assert "ModuleNotFoundError" in probe.stderr
    # After a real run of the agent's imports, so the bytecode Python wrote counts too.
    helped = agent_venv.run("--help")
    assert helped.returncode == 0, helped.stderr
    size = agent_venv.size_bytes()
    figure = f"{size / 10**6:.1f} MB ({size / 2**20:.1f} MiB)"
    print(f"agent venv (numpy, onnxruntime: {imported.stdout.strip()}): {figure}")
    assert size <= MAX_INSTALL_BYTES, f"the agent's venv takes {figure}"


def test_the_zipapp_prints_its_help_in_the_torch_free_venv(agent_venv: AgentVenv) -> None:
    helped = agent_venv.run("--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: nasvit-agent.pyz")
    for option in ("--server", "--token", "--threads", "--provider", "--once", "--idle-exit"):
        assert option in helped.stdout


def test_the_zipapp_reports_an_unreachable_server_in_one_line(
    agent_venv: AgentVenv, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    ran = agent_venv.run("--server", url, "--token", "nsd_unused", "--once", timeout=120)
    assert ran.returncode == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("error: cannot reach the server") and url in lines[0]
    assert "Traceback" not in ran.stderr
