"""docker/: no Docker engine runs here, so the image and compose files are checked outside Docker.

Every command a container would run is run here with ``--help`` (the same CLI the image
installs), its options are parsed by the real command-line parser, the environment the
containers get is read by the real service settings, and the ports and addresses the services
use to reach each other are checked to agree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from nasvit_testing.ray_cluster import shell_steps

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
OUR_IMAGE = "nasvit:cpu"
POSTGRES_PORT = 5432  # the postgres image's default; compose does not change it


# ---- parsing --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """ENTRYPOINT/CMD arguments; the JSON (exec) form is required so signals reach nasvit."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKER / "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def instruction(dockerfile: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile if keyword == name]


def image_argv(service: dict[str, Any], dockerfile: list[tuple[str, str]]) -> list[str]:
    """The process a container of our image ends up running (the last step of a
    ``sh -c "a && exec b"`` command; see :func:`container_steps`)."""
    return container_steps(service, dockerfile)[-1]


def container_steps(service: dict[str, Any], dockerfile: list[tuple[str, str]]) -> list[list[str]]:
    """The commands a container of our image runs in turn: compose entrypoint/command override
    the image's ENTRYPOINT/CMD (an overridden entrypoint also drops the image's CMD), and a
    ``sh -c`` command is split at ``&&`` (with ``exec`` dropped)."""
    argv = _container_command(service, dockerfile)
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    assert len(argv) == 3, argv
    return shell_steps(argv[2])


def _container_command(service: dict[str, Any], dockerfile: list[tuple[str, str]]) -> list[str]:
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        entrypoint = exec_form(instruction(dockerfile, "ENTRYPOINT")[-1])
        default_command = exec_form(instruction(dockerfile, "CMD")[-1])
    else:
        default_command = []
    command = service.get("command", default_command)
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    return [*entrypoint, *command]


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == OUR_IMAGE}


def option_value(argv: list[str], option: str) -> str:
    for i, arg in enumerate(argv):
        if arg == option:
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{option} not in {argv}")


def run_help(argv: list[str]) -> str:
    """Run a command with --help; wide, plain output so option names are never wrapped."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{' '.join(argv)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


# ---- the image ------------------------------------------------------------------------------


def test_image_is_cpu_python_with_torch_from_the_cpu_index(dockerfile) -> None:
    assert instruction(dockerfile, "FROM") == ["python:3.11-slim"]
    runs = instruction(dockerfile, "RUN")
    torch_step = next(i for i, run in enumerate(runs) if "torch==" in run)
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install \.(\s|$)", run))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_step]
    # torch must be in place before the project, or pip resolves torch from PyPI (CUDA build).
    assert torch_step < project_step
    # The image pins the torch the Makefile (and so CI) tests with.
    makefile_pin = re.search(r"TORCH_SPEC \?= torch==(\S+)", (REPO / "Makefile").read_text())
    assert makefile_pin is not None
    assert f"ARG TORCH_VERSION={makefile_pin.group(1)}" in [
        f"ARG {a}" for a in instruction(dockerfile, "ARG")
    ]


def test_image_copies_every_packaged_folder(dockerfile) -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {args.split()[0] for args in instruction(dockerfile, "COPY")}
    # A folder mapped in pyproject but not copied would build a wheel without that package.
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for source in copied:
        assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source


# ---- commands -------------------------------------------------------------------------------


def nasvit_subcommand(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``nasvit worker --poll 2`` into (["worker"], ["--poll", "2"])."""
    assert argv[0] == "nasvit", argv
    words = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words, argv[1 + len(words) :]


def test_every_nasvit_command_answers_help_and_parses_its_arguments(compose, dockerfile) -> None:
    import typer

    from nasvit.cli import app as cli_app

    argvs = {name: image_argv(s, dockerfile) for name, s in our_services(compose).items()}
    argvs["image default"] = [
        *exec_form(instruction(dockerfile, "ENTRYPOINT")[-1]),
        *exec_form(instruction(dockerfile, "CMD")[-1]),
    ]
    nasvit_argvs = {name: argv for name, argv in argvs.items() if argv[0] == "nasvit"}
    assert {"server", "worker", "image default"} <= set(nasvit_argvs)

    root = typer.main.get_command(cli_app)
    for name, argv in nasvit_argvs.items():
        words, arguments = nasvit_subcommand(argv)
        help_text = run_help([str(BIN / "nasvit"), *words])
        assert "Usage:" in help_text, name
        command = root
        for word in words:
            # typer vendors click: a group is whatever has subcommands.
            subcommands = getattr(command, "commands", {})
            assert word in subcommands, f"{name}: '{word}' is not a nasvit subcommand"
            command = subcommands[word]
        # The real parser parses (and type-checks) the container's arguments; a bad option or
        # value raises the CLI's usage error here.
        try:
            command.make_context(" ".join(["nasvit", *words]), list(arguments))
        except Exception as exc:  # click's UsageError (typer vendors its own click)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            pytest.fail(f"{name} runs `{' '.join(argv)}`: {message}")
        for option in (a.split("=", 1)[0] for a in arguments if a.startswith("--")):
            assert option in help_text, f"{name}: {option} missing from --help"

    assert argvs["server"][:2] == ["nasvit", "serve"]
    assert argvs["worker"][:2] == ["nasvit", "worker"]


def test_ray_commands_are_real_ray_commands(compose, dockerfile) -> None:
    head = image_argv(compose["services"]["ray-head"], dockerfile)
    assert head[:3] == ["ray", "start", "--head"]
    # The worker's container joins the head as a node before nasvit connects (a Ray driver
    # runs on a node of its cluster).
    join, _worker = container_steps(compose["services"]["worker"], dockerfile)
    assert join[:2] == ["ray", "start"] and "--head" not in join
    help_text = run_help([str(BIN / "ray"), "start"])
    for argv in (head, join):
        for option in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
            assert option in help_text, f"ray start has no {option}"


# ---- environment, ports, wiring --------------------------------------------------------------


def test_compose_services_and_wiring(compose) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "server", "worker", "ray-head"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert set(our_services(compose)) == {"server", "worker", "ray-head"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name}: volume {source} not declared"
    # Every nasvit container is built from this repository's Dockerfile.
    for service in our_services(compose).values():
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / service["build"]["context"]).resolve() == REPO


def test_environment_is_read_by_the_service_settings(compose, dockerfile, monkeypatch) -> None:
    from nasvit.settings import Settings

    fields = set(Settings.model_fields)
    for key in list(os.environ):
        if key.startswith("NASVIT_"):
            monkeypatch.delenv(key)
    image_env = dict(re.findall(r"(NASVIT_\w+)=(\S+)", " ".join(instruction(dockerfile, "ENV"))))
    for name in ("server", "worker"):
        environment = {**image_env, **compose["services"][name]["environment"]}
        nasvit_keys = [k for k in environment if k.startswith("NASVIT_")]
        assert nasvit_keys, name
        for key in nasvit_keys:
            # Settings ignores unknown NASVIT_* names, so a typo here would be silently dropped.
            assert key.removeprefix("NASVIT_").lower() in fields, f"{name}: {key} is not a setting"
        with monkeypatch.context() as env:
            for key in nasvit_keys:
                env.setenv(key, str(environment[key]))
            settings = Settings()
        assert settings.database_url == environment["NASVIT_DATABASE_URL"]
        assert settings.home == Path(environment["NASVIT_HOME"])
        assert settings.resolved_artifact_root == Path(environment["NASVIT_ARTIFACT_ROOT"])

    server_env = compose["services"]["server"]["environment"]
    worker_env = compose["services"]["worker"]["environment"]
    # The server reads the trials the worker writes: same database, same artifact folder, and
    # that folder lies on a volume both mount.
    for key in ("NASVIT_DATABASE_URL", "NASVIT_ARTIFACT_ROOT", "NASVIT_HOME"):
        assert server_env[key] == worker_env[key], key
    artifact_root = Path(server_env["NASVIT_ARTIFACT_ROOT"])
    shared = set(compose["services"]["server"]["volumes"]) & set(
        compose["services"]["worker"]["volumes"]
    )
    assert any(artifact_root.is_relative_to(v.split(":")[1]) for v in shared), shared


def test_database_url_reaches_the_postgres_service(compose) -> None:
    from sqlalchemy.engine import make_url

    postgres = compose["services"]["postgres"]
    url = make_url(compose["services"]["server"]["environment"]["NASVIT_DATABASE_URL"])
    assert url.get_backend_name() == "postgresql"
    url.get_dialect()  # the driver named in the URL is installed with nasvit
    assert url.host == "postgres" and (url.port or POSTGRES_PORT) == POSTGRES_PORT
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.password == postgres["environment"]["POSTGRES_PASSWORD"]
    assert url.database == postgres["environment"]["POSTGRES_DB"]
    assert f"-p {POSTGRES_PORT}" in " ".join(postgres["healthcheck"]["test"])


def test_ports_agree(compose, dockerfile) -> None:
    server = compose["services"]["server"]
    argv = image_argv(server, dockerfile)
    port = int(option_value(argv, "--port"))
    assert option_value(argv, "--host") == "0.0.0.0"  # reachable from outside the container
    published = [str(p).split(":") for p in server["ports"]]
    assert [int(p[-1]) for p in published] == [port]
    assert str(port) in instruction(dockerfile, "EXPOSE")[0].split()
    # The image's default command serves on the same port.
    default = exec_form(instruction(dockerfile, "CMD")[-1])
    assert int(option_value(default, "--port")) == port
    health_url = re.search(r"http://[^'\"]+", " ".join(server["healthcheck"]["test"]))
    assert health_url is not None and urlsplit(health_url.group()).port == port

    ray_head = image_argv(compose["services"]["ray-head"], dockerfile)
    gcs_port = int(option_value(ray_head, "--port"))
    join, worker_argv = container_steps(compose["services"]["worker"], dockerfile)
    # Both the node's join and nasvit's connection use the head's GCS address.
    for address in (option_value(join, "--address"), option_value(worker_argv, "--ray-address")):
        assert address == f"ray-head:{gcs_port}", address
    # Token authentication: the head and the joining container hold the same token setting.
    head_env = compose["services"]["ray-head"]["environment"]
    worker_env = compose["services"]["worker"]["environment"]
    assert head_env["RAY_AUTH_MODE"] == worker_env["RAY_AUTH_MODE"] == "token"
    assert head_env["RAY_AUTH_TOKEN"] == worker_env["RAY_AUTH_TOKEN"]
    assert head_env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")  # set by the user


def test_health_route_of_the_healthcheck_exists(compose, tmp_path, monkeypatch) -> None:
    from nasvit.server.app import create_app
    from nasvit.settings import Settings

    for key in list(os.environ):
        if key.startswith("NASVIT_"):
            monkeypatch.delenv(key)  # a local SQLite database, whatever the caller's setup

    server = compose["services"]["server"]
    health_url = re.search(r"http://[^'\"]+", " ".join(server["healthcheck"]["test"]))
    assert health_url is not None
    app = create_app(Settings(home=tmp_path))
    assert urlsplit(health_url.group()).path in app.openapi()["paths"]
