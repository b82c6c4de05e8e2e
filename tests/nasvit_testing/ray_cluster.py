"""A real multi-node Ray cluster on loopback, as a user's would be: a head started with
``ray start --head`` and further nodes with ``ray start --address``, each its own raylet with
its own CPUs, and token authentication on.

Every process a cluster starts is a descendant of one of its ``ray start --block`` processes;
:meth:`RayCluster.stop` kills those trees and checks that nothing of them is left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from nasvit_testing.ports import free_port

RAY = str(Path(sys.executable).parent / "ray")
# Polls the cluster until it has N alive nodes, then prints their IDs (a JSON list).
_ALIVE_NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while True:
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(alive))
"""
START_TIMEOUT_S = 90.0


@dataclass
class RayNode:
    """One ``ray start --block`` process and the raylet (and workers) under it."""

    process: subprocess.Popen[bytes]
    log: Path

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def processes_named(self, prefix: str) -> list[psutil.Process]:
        """The processes under this node whose name starts with ``prefix`` (``ray::`` workers
        take their actor's class as their name)."""
        found = []
        for process in self.tree():
            try:
                if process.name().startswith(prefix):
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
        return found

    def raylet(self) -> psutil.Process:
        raylets = self.processes_named("raylet")
        if not raylets:
            raise AssertionError(f"no raylet under ray start (pid {self.process.pid}); {self.log}")
        return raylets[0]

    def node_id(self) -> str:
        """The Ray node ID of this node (from its raylet's command line)."""
        for argument in self.raylet().cmdline():
            match = re.fullmatch(r"--node_id=([0-9a-f]+)", argument)
            if match:
                return match.group(1)
        raise AssertionError("the raylet's command line names no node id")


@dataclass
class RayCluster:
    """A head plus the nodes :meth:`add_node` joins; ``env`` is what a driver needs to join
    (the token), on top of this process's environment."""

    address: str
    env: dict[str, str]
    temp_dir: Path
    nodes: list[RayNode] = field(default_factory=list)

    @classmethod
    def start(cls, cpus: int = 1, head_command: list[str] | None = None) -> RayCluster:
        """A head with ``cpus`` CPUs. ``head_command`` (``ray start --head ...`` from a compose
        file, say) replaces the default head command; its port is replaced with a free one."""
        port = free_port()
        token = secrets.token_hex(32)
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            # Ray's usage-stats prompt and report: nothing leaves this machine.
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        # Short: Ray puts Unix sockets under it, and their paths are limited to 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="nvray-", dir="/tmp"))
        command = head_command or ["ray", "start", "--head", "--include-dashboard=false"]
        command = [RAY if command[0] == "ray" else command[0], *command[1:]]
        command = [a for a in command if not a.startswith("--port")]
        command += [
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        if "--block" not in command:
            command.append("--block")
        cluster = cls(f"127.0.0.1:{port}", env, temp_dir)
        cluster.nodes.append(cluster._launch(command, "head"))
        try:
            cluster.wait_for_nodes(1)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _launch(self, command: list[str], name: str) -> RayNode:
        log = self.temp_dir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, env=self.env, stdout=sink, stderr=subprocess.STDOUT, cwd=self.temp_dir
            )
        return RayNode(process, log)

    def evaluator_processes(self) -> list[psutil.Process]:
        """The processes of nasvit's evaluation actors, on every node started here."""
        return [p for node in self.nodes for p in node.processes_named("ray::EvaluatorActor")]

    def add_node(self, cpus: int = 1) -> RayNode:
        """A second raylet joining the head: a separate node with its own ``cpus``."""
        node = self._launch(
            [
                RAY,
                "start",
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                "--disable-usage-stats",
                "--block",
            ],
            f"node{len(self.nodes)}",
        )
        self.nodes.append(node)
        try:
            self.wait_for_nodes(len(self.nodes))
        except BaseException:
            self.stop()
            raise
        return node

    def alive_node_ids(self, at_least: int = 1) -> set[str]:
        """Node IDs the head counts as alive, once there are ``at_least`` of them (asked by a
        driver process that joins the cluster, as nasvit does)."""
        result = subprocess.run(
            [sys.executable, "-c", _ALIVE_NODES, self.address, str(at_least)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=START_TIMEOUT_S + 30,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return set(json.loads(result.stdout.strip().splitlines()[-1]))

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(_has_raylet(node) for node in self.nodes):
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise AssertionError(f"ray start exited: {node.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no raylet started in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        if count > 1:  # a head is up once its raylet runs; a joining node once the head says so
            ids = {node.node_id() for node in self.nodes}
            assert ids <= self.alive_node_ids(at_least=count), "a started node never joined"

    def stop(self) -> None:
        """Kill every process the cluster started and check that none is left."""
        processes = {p for node in self.nodes for p in node.tree()}
        # Nodes joined without --block (as a container's entrypoint does) run detached from
        # any process here; every process of the cluster names its temp folder.
        for process in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in process.info["cmdline"] or []):
                try:
                    processes.update([process, *process.children(recursive=True)])
                except psutil.NoSuchProcess:
                    continue
        # SIGKILL: a test cluster keeps nothing worth a graceful stop, and Ray's own shutdown
        # of a node whose peers are gone can take many seconds.
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(list(processes), timeout=15)
        for node in self.nodes:
            node.process.wait(timeout=15)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not alive, f"processes left behind: {alive}"


def _has_raylet(node: RayNode) -> bool:
    try:
        node.raylet()
        return True
    except AssertionError:
        return False


def ray_process_ids() -> set[int]:
    """Every Ray process on this machine (raylets, GCS servers, workers and actors)."""
    found = set()
    for process in psutil.process_iter(["pid", "name"]):
        name = process.info["name"] or ""
        if name in ("raylet", "gcs_server") or name.startswith("ray::"):
            found.add(process.info["pid"])
    return found


def shell_steps(script: str) -> list[list[str]]:
    """The commands of a ``sh -c`` script ``a && exec b``, in turn (``exec`` dropped): how a
    container's entrypoint chains joining a cluster and running nasvit."""
    steps = [shlex.split(step) for step in script.split("&&")]
    return [step[1:] if step[0] == "exec" else step for step in steps]
