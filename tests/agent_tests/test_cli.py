"""The agent's command line: bad input is one line on stderr and exit code 2, never a
traceback, and nothing is sent anywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nasvit.agent.__main__ import main

from nasvit_testing.ports import free_port

GOOD = ["--server", "http://127.0.0.1:9", "--token", "nsd_x"]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        pytest.param(["--token", "nsd_x"], "--server", id="no-server"),
        pytest.param(["--server", "ftp://h", "--token", "nsd_x"], "http(s) URL", id="not-http"),
        pytest.param(["--server", "127.0.0.1:8000", "--token", "t"], "http(s) URL", id="no-scheme"),
        pytest.param([*GOOD, "--threads", "0"], "at least 1", id="threads-0"),
        pytest.param([*GOOD, "--threads", "two"], "not an integer", id="threads-text"),
        pytest.param([*GOOD, "--provider", "tpu"], "invalid choice", id="provider"),
        pytest.param([*GOOD, "--optimization", "max"], "invalid choice", id="optimization"),
        pytest.param([*GOOD, "--max-items", "257"], "at most 256", id="max-items"),
        pytest.param([*GOOD, "--idle-exit", "nan"], "finite", id="idle-exit-nan"),
        pytest.param([*GOOD, "--idle-exit", "-1"], "finite", id="idle-exit-negative"),
        pytest.param([*GOOD, "--name", ""], "1 to 255", id="empty-name"),
        pytest.param([*GOOD, "--frobnicate"], "unrecognized", id="unknown-option"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str],
    reason: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NASVIT_DEVICE_TOKEN", raising=False)
    assert main(argv) == 2
    assert reason in _one_error_line(capsys)


def test_a_missing_token_is_an_error_unless_the_environment_has_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NASVIT_DEVICE_TOKEN", raising=False)
    assert main(["--server", "http://127.0.0.1:9"]) == 2
    assert "--token is required" in _one_error_line(capsys)
    # From the environment: the agent gets as far as the (absent) server.
    monkeypatch.setenv("NASVIT_DEVICE_TOKEN", "nsd_from_env")
    assert main(["--server", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the server" in _one_error_line(capsys)


def test_a_provider_missing_from_onnxruntime_is_refused_before_registering(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    # No server listens: registering would say so; the provider is checked first.
    assert main([*GOOD, "--provider", "cuda"]) == 2
    assert "has no CUDAExecutionProvider" in _one_error_line(capsys)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: nasvit agent")


def test_python_m_nasvit_agent_runs_without_loading_torch() -> None:
    """In a full install the agent is ``python -m nasvit.agent``; importing it must not pull in
    the rest of nasvit (torch, onnx, an HTTP library)."""
    helped = subprocess.run(
        [sys.executable, "-m", "nasvit.agent", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: nasvit agent")
    probe = (
        "import sys\n"
        "import nasvit.agent.__main__, nasvit.agent.runner, nasvit.agent.bundle\n"
        "print(sorted(m for m in ('torch', 'onnx', 'httpx', 'sqlalchemy') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_nasvit_agent_hands_every_argument_to_the_agent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``nasvit agent`` is the same command: its help and its errors are the agent's own."""
    from nasvit.cli import main as nasvit_main

    with pytest.raises(SystemExit) as exited:
        nasvit_main(["agent", "--help"])
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out.startswith("usage: nasvit agent")
    with pytest.raises(SystemExit) as exited:
        nasvit_main(["agent", "--server", "ftp://h", "--token", "nsd_x"])
    assert exited.value.code == 2
    assert "http(s) URL" in _one_error_line(capsys)
