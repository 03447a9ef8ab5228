"""The launcher (`python -m pipeline.launch`): one node or several from the environment, bad environments refused
before any work, two nodes on loopback matching one process, a checkpoint folder held by one run at a time, and
workers that end with a killed launcher or a killed DVC."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.launch import rendezvous_args
from pipeline.runtime import start
from pipeline.stage import check_split
from tests.helpers import ROOT, stage, tensors, write_params

NODES = {"DIFFRATIO_NNODES": "2", "DIFFRATIO_NODE_RANK": "1", "DIFFRATIO_RDZV_ENDPOINT": "node0:29500"}


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFRATIO_", "SLURM_", "TORCHELASTIC_"))}
    return {**clean, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def test_one_node_is_torchrun_standalone():
    assert rendezvous_args({}, "stages.train") == ["--standalone"]
    assert rendezvous_args({"DIFFRATIO_NNODES": "1"}, "stages.train") == ["--standalone"]


def test_nodes_come_from_the_environment():
    assert rendezvous_args(NODES, "stages.train") == [
        "--nnodes", "2", "--node-rank", "1", "--rdzv-backend", "static", "--rdzv-endpoint", "node0:29500",
        "--rdzv-id", "stages.train", "--rdzv-conf", "timeout=600"]
    slurm = {**NODES, "SLURM_NODEID": "0", "DIFFRATIO_RDZV_TIMEOUT": "1800"}
    del slurm["DIFFRATIO_NODE_RANK"]
    args = rendezvous_args(slurm, "stages.pretrain")
    assert args[args.index("--node-rank") + 1] == "0" and args[-1] == "timeout=1800"


@pytest.mark.parametrize("change, message", [
    ({"DIFFRATIO_NNODES": None}, "DIFFRATIO_NODE_RANK is set but DIFFRATIO_NNODES is not"),
    ({"DIFFRATIO_NNODES": "two"}, "DIFFRATIO_NNODES = 'two' is not a number of nodes"),
    ({"DIFFRATIO_NODE_RANK": None}, "this node's rank is not set: set DIFFRATIO_NODE_RANK"),
    ({"DIFFRATIO_NODE_RANK": "2"}, "DIFFRATIO_NODE_RANK = '2' is not a node rank of 2 nodes"),
    ({"DIFFRATIO_RDZV_ENDPOINT": None}, "DIFFRATIO_RDZV_ENDPOINT is not set: set it to host:port of node 0"),
    ({"DIFFRATIO_RDZV_ENDPOINT": "node0"}, "DIFFRATIO_RDZV_ENDPOINT = 'node0' is not host:port"),
    ({"DIFFRATIO_RDZV_TIMEOUT": "0"}, "DIFFRATIO_RDZV_TIMEOUT = '0' is not a number of seconds"),
])
def test_bad_environment_is_refused(change, message):
    environment = {k: v for k, v in {**NODES, **change}.items() if v is not None}
    with pytest.raises(PipelineError, match=message):
        rendezvous_args(environment, "stages.train")


def test_launcher_refuses_a_bad_environment_before_any_work(tmp_path):
    write_params(tmp_path, 1, {})
    out = subprocess.run([sys.executable, "-m", "pipeline.launch", "stages.pretrain"], cwd=tmp_path,
                         env=env(DIFFRATIO_NNODES="2", DIFFRATIO_NODE_RANK="1"), capture_output=True, text=True)
    assert out.returncode == 2 and "DIFFRATIO_RDZV_ENDPOINT is not set" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_world_is_processes_per_node_times_nodes(monkeypatch, params_dict):
    compute = parse_params(params_dict).compute.model_copy(update={"processes": 2})
    for world, local in ((3, 2), (4, 1)):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
        with pytest.raises(PipelineError, match=f"compute.processes = 2 per node, but this node started {local} of "
                                                f"{world} processes on 2 nodes"):
            start("cpu", compute, distributed=True)


def test_batches_split_over_the_processes_of_all_nodes(params_dict):
    params_dict["pretrain"].update(batch_size=32, batch_per_process=8)
    params = parse_params(params_dict)
    check_split(params, 2)  # 16 rows per process: two passes of 8
    with pytest.raises(PipelineError, match="pretrain.batch_size = 32 does not split over the 3 processes"):
        check_split(params, 3)
    with pytest.raises(PipelineError, match="pretrain.batch_per_process = 8 does not divide the 4 rows"):
        check_split(params, 8)


def test_worker_of_an_agent_that_already_ended_ends():
    code = "from pipeline.runtime import _die_with_agent; _die_with_agent(); print('still running')"
    out = subprocess.run([sys.executable, "-c", code], env=env(TORCHELASTIC_RUN_ID="x", DIFFRATIO_AGENT_PID="1"),
                         capture_output=True, text=True)
    assert out.returncode == -signal.SIGTERM and "still running" not in out.stdout


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("encoded")
    write_params(folder, 1, {})
    stage(folder, "prepare", 1)
    stage(folder, "encode", 1)
    return folder


@pytest.fixture
def workdir(encoded, tmp_path) -> Path:
    """A copy of the tiny workdir with prepared and encoded digits."""
    shutil.copytree(encoded, tmp_path, dirs_exist_ok=True)
    return tmp_path


def launch(workdir: Path, nproc: int, **extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.launch", "--nproc-per-node", str(nproc), "stages.pretrain"]
    return subprocess.Popen(command, cwd=workdir, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_match_one_process(workdir):
    stage(workdir, "pretrain", 1)
    one = tensors(workdir / "data/pretrain")
    shutil.rmtree(workdir / "data/pretrain")
    # one process on each of two nodes (loopback): 32 rows per step, 16 each, in two passes of 8
    write_params(workdir, 1, {"pretrain": 8})
    nodes = {"DIFFRATIO_NNODES": "2", "DIFFRATIO_RDZV_ENDPOINT": f"127.0.0.1:{free_port()}"}
    runs = [launch(workdir, 1, **nodes, DIFFRATIO_NODE_RANK=str(rank)) for rank in (1, 0)]
    for run in runs:
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-3000:]
    two = tensors(workdir / "data/pretrain")
    assert json.loads((workdir / "metrics/pretrain.json").read_text())["processes"] == 2
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=2e-5)


HOLD = """import sys, time
from pathlib import Path
from pipeline.training.loop import checkpoint_lock
from tests.helpers import CPU
with checkpoint_lock(Path("data/checkpoints/pretrain"), CPU):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_held_checkpoint_folder_refuses_a_second_run(workdir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=workdir, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=workdir, env=env(),
                             capture_output=True, text=True)
        assert out.returncode == 2
        assert f"data/checkpoints/pretrain is in use by process {holder.pid}" in " ".join(out.stderr.split())
        assert not (workdir / "data/pretrain").exists()
    finally:
        holder.kill()
        holder.wait()
    stage(workdir, "pretrain", 1)  # the lock ended with its holder
    assert (workdir / "data/pretrain/score.safetensors").exists()


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            children += [int(entry.name), *descendants(int(entry.name))]
    return children


def running(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("top", ["launcher", "sh", "bash"])
def test_killed_launcher_or_dvc_ends_the_workers(workdir, top):
    """SIGKILL the launcher, or a stand-in for DVC running the launcher as DVC does (`$SHELL -c <cmd>`; dash,
    unlike bash, does not exec the command, so the shell stays between them): every process below it ends."""
    write_params(workdir, 2, {})
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["pretrain"]["duration_images"] = 10**9
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "pipeline.launch", "--nproc-per-node", "2", "stages.pretrain"]
    if top != "launcher":
        shell = shutil.which(top)
        cmd = [sys.executable, "-c", f"import subprocess; subprocess.run([{shell!r}, '-c', {' '.join(cmd)!r}])"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock, deadline = workdir / "data/checkpoints/pretrain.lock", time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # rank 0 holds the lock once both workers train
    below = descendants(proc.pid)
    workers = [p for p in below if b"-m\0stages.pretrain" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert proc.poll() is None and len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(map(running, below)) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in below if running(p)], "processes outlived the killed launcher or DVC"
