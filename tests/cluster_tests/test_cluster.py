"""Searches on a real multi-node Ray cluster on loopback (nasvit_testing.ray_cluster): a head
started with the compose file's ``ray start --head`` command and a second node joined with
``ray start --address``, one CPU each, token authentication on.

Each search here is compared with one reference run in this process (``--workers 1``, one
torch thread, the same seed and latency table): the trials must be the same, in the same order,
with the same accuracy and loss, whatever happened to the cluster on the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from nasvit.searching.trial_store import study_name_for

from nasvit_testing.ray_cluster import RayCluster, ray_process_ids, shell_steps
from nasvit_testing.service import Deployment, environment, start_deployment

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))
COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
# 4 batches of 16: a process killed once the first batch is stored dies mid-search.
EVALUATIONS = 64
# Two front points timed end to end: what is checked here is the search, not the decision.
SEARCH = [
    "--budget",
    "300us",
    "--evaluations",
    str(EVALUATIONS),
    "--seed",
    "5",
    "--measure-top",
    "2",
]


def compose_service(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"][name])


def compose_head_command() -> list[str]:
    service = compose_service("ray-head")
    return [*service["entrypoint"], *service["command"]]


def compose_worker_steps(address: str) -> list[list[str]]:
    """The worker container's commands (join the head as a node, then run the worker), with
    the compose network's head address replaced by the test cluster's."""
    return shell_steps(compose_service("worker")["command"][0].replace("ray-head:6379", address))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Any]) -> Path:
    """NASVIT_HOME holding the measured table: every search here sees the same latencies."""
    home = tmp_path_factory.mktemp("cluster-home")
    shutil.copy(search_assets["database"], home / "nasvit.db")
    return home


def search_env(home: Path, cluster: RayCluster | None = None, **extra: str) -> dict[str, str]:
    base = cluster.env if cluster else dict(os.environ)
    env = {k: v for k, v in base.items() if not k.startswith("NASVIT_")}
    return {**env, "NASVIT_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}


def search_command(checkpoint: Path, out: Path, *args: str) -> list[str]:
    return [NASVIT, "search", "--space", "efficientformer", "--ckpt", str(checkpoint), *SEARCH,
            "--out", str(out), "--json", *args]  # fmt: skip


def trials(out: Path) -> list[tuple[str, float, float]]:
    lines = (out / "trials.jsonl").read_text().splitlines()
    return [(t["short"], t["accuracy"], t["loss"]) for t in map(json.loads, lines)]


def stored_trials(home: Path, out: Path) -> list[int]:
    """Trial numbers in the search's database record (Optuna's storage)."""
    study = optuna.load_study(
        study_name=study_name_for(out), storage=f"sqlite:///{home / 'nasvit.db'}"
    )
    return sorted(trial.number for trial in study.trials)


@pytest.fixture(scope="module")
def reference(home: Path, search_assets: dict[str, Any], tmp_path_factory) -> list[Any]:
    """The in-process run: one torch thread, no Ray."""
    out = tmp_path_factory.mktemp("reference") / "run"
    command = search_command(search_assets["checkpoint"], out, "--workers", "1")
    result = subprocess.run(command, capture_output=True, text=True, env=search_env(home))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["evaluation"]["where"] == "in-process"
    return trials(out)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Head (from the compose file's command) plus a second node, one CPU each."""
    before = ray_process_ids()
    cluster = RayCluster.start(cpus=1, head_command=compose_head_command())
    try:
        cluster.add_node(cpus=1)
        yield cluster
    finally:
        cluster.stop()
    assert ray_process_ids() <= before, "the cluster left Ray processes behind"


def check_search(
    home: Path, out: Path, result: Any, reference: list[Any], nodes: set[str]
) -> dict[str, Any]:
    """The search succeeded on ``nodes`` with the reference's trials, each stored once."""
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    evaluation = report["evaluation"]
    assert evaluation["where"] == "ray" and evaluation["workers"] == 2
    assert set(evaluation["candidates_per_node"]) == nodes
    # A lost chunk's candidates count once: where they were finally evaluated.
    assert sum(evaluation["candidates_per_node"].values()) == EVALUATIONS
    assert trials(out) == reference
    assert stored_trials(home, out) == list(range(EVALUATIONS))
    return evaluation


def test_a_wrong_token_is_refused_with_the_reason(
    cluster: RayCluster, home: Path, search_assets: dict[str, Any], tmp_path
) -> None:
    out = tmp_path / "run"
    command = search_command(search_assets["checkpoint"], out, "--ray-address", cluster.address)
    # Ray retries a refused join for about 20 s by default; two tries tell the same here.
    env = search_env(home, cluster, RAY_AUTH_TOKEN="0" * 64, RAY_gcs_server_port_wait_time_s="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"the Ray cluster at {cluster.address} refused this process" in result.stderr
    assert "RAY_AUTH_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_the_compose_worker_joins_and_runs_a_queued_search_on_the_cluster(
    cluster: RayCluster, home: Path, search_assets: dict[str, Any], reference
) -> None:
    join, worker = compose_worker_steps(cluster.address)
    assert join[:2] == ["ray", "start"] and worker[:2] == ["nasvit", "worker"]
    env = environment(home, search_assets)
    env.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    deployment = start_deployment(Deployment(env=env, home=home))
    try:
        joined = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), *join[1:], "--node-ip-address=127.0.0.1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert joined.returncode == 0, joined.stderr[-3000:]
        deployment.start_worker(*worker[2:], name="cluster-worker")
        # workers auto: one actor per CPU of the cluster (the joined node brings none).
        job = deployment.submit(budget="300us", evaluations=EVALUATIONS, seed=5)
        finished = deployment.wait_finished(job["id"], timeout=300)
        assert finished["status"] == "succeeded", (
            finished,
            deployment.worker_log("cluster-worker"),
        )
        out = env_artifacts(env, job["id"])
        nodes = {node.node_id() for node in cluster.nodes}
        evaluation = json.loads((out / "report.json").read_text())["evaluation"]
        assert evaluation["workers"] == 2
        assert set(evaluation["candidates_per_node"]) == nodes  # not the 0-CPU joined node
        assert trials(out) == reference
    finally:
        deployment.stop()


def env_artifacts(env: dict[str, str], job_id: str) -> Path:
    return Path(env["NASVIT_HOME"]) / "jobs" / job_id


def kill_after_first_batch(
    command: list[str], env: dict[str, str], out: Path, kill: Any
) -> subprocess.CompletedProcess[str]:
    """Run the search; once its first batch is stored, call ``kill()`` (the search still has
    three batches to go)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "trials.jsonl").is_file() or not (out / "trials.jsonl").read_text():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the search stored no batch"
            time.sleep(0.05)
        killed = kill()
        assert process.poll() is None, "the search ended before anything was killed"
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert killed
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_a_search_spreads_over_both_nodes_and_a_killed_actor_changes_no_trial(
    cluster: RayCluster, home: Path, search_assets: dict[str, Any], reference, tmp_path
) -> None:
    """`nasvit search --ray-address --workers 2`: an actor per node; one actor's process is
    killed after the first batch, its chunk is re-run, and the trials equal the in-process run.
    (The compose worker's test above runs an undisturbed search on the same cluster.)"""
    out = tmp_path / "run"
    command = search_command(
        search_assets["checkpoint"], out, "--ray-address", cluster.address, "--workers", "2"
    )

    def kill_one_actor() -> bool:
        actors = cluster.evaluator_processes()
        assert len(actors) == 2, actors
        actors[0].kill()
        return True

    result = kill_after_first_batch(command, search_env(home, cluster), out, kill_one_actor)
    nodes = {node.node_id() for node in cluster.nodes}
    evaluation = check_search(home, out, result, reference, nodes)
    assert len(evaluation["lost_actors"]) == 1, evaluation
    assert 0 < evaluation["rerun_chunks"] <= 2
    assert "died" in result.stderr


def test_a_lost_node_costs_its_chunk_and_changes_no_trial(
    cluster: RayCluster, home: Path, search_assets: dict[str, Any], reference, tmp_path
) -> None:
    """The second node's raylet is killed mid-search: its actor goes with it. The module's
    last test, since the cluster stays one node short (run alone, it gets a fresh cluster)."""
    second = cluster.nodes[1]
    nodes = {node.node_id() for node in cluster.nodes}
    second_id = second.node_id()
    out = tmp_path / "run"
    command = search_command(
        search_assets["checkpoint"], out, "--ray-address", cluster.address, "--workers", "2"
    )

    def kill_raylet() -> bool:
        second.raylet().kill()
        return True

    result = kill_after_first_batch(command, search_env(home, cluster), out, kill_raylet)
    evaluation = check_search(home, out, result, reference, nodes)
    assert len(evaluation["lost_actors"]) == 1, evaluation
    assert second_id[:12] in evaluation["lost_actors"][0]
    assert 0 < evaluation["rerun_chunks"] <= 2
