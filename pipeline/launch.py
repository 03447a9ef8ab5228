"""`python -m pipeline.launch [--nproc-per-node N] stages.<name>`: a distributed stage under torchrun, on one
node or on several (dvc.yaml's commands).

One node, the default: exactly `torchrun --standalone --nproc-per-node N -m stages.<name>`; with N = 1 the stage
runs in this process instead (as `python -m stages.<name>`: the same code path, without torchrun's agent and a
second interpreter, whose start-up alone costs seconds a stage on a small CPU). Several nodes: every
node runs the same stage with these set in its environment (not in params.yaml: they differ between nodes, and
the results do not depend on them):

    DIFFRATIO_NNODES         the number of nodes (unset or 1: one node)
    DIFFRATIO_NODE_RANK      this node's rank: 0 on the node that runs DVC, 1 ... NNODES - 1 on the others
                             (default: SLURM_NODEID)
    DIFFRATIO_RDZV_ENDPOINT  host:port of node 0, reachable from every node
    DIFFRATIO_RDZV_TIMEOUT   seconds a node waits for the others (default 600)

torchrun's static rendezvous gives node 0 the ranks 0 ... N - 1, so rank 0, which writes the outputs and the
checkpoints, runs where DVC runs (the c10d rendezvous would rank the nodes by host name and ignore the node rank).
N defaults to compute.processes in params.yaml.

The launcher is torchrun's agent. It ends with the process that started it (DVC), even one killed with SIGKILL,
and torchrun then ends its workers; each worker also ends with the launcher (pipeline.runtime.start).
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from torch.distributed.run import main as torchrun

from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.runtime import die_with_parent
from pipeline.stage import console

SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "fish"}


def _natural(env: Mapping[str, str], name: str) -> int | None:
    value = env[name].strip()
    return int(value) if value.isdigit() else None


def _rank(env: Mapping[str, str], nodes: int) -> int:
    name = "DIFFRATIO_NODE_RANK" if "DIFFRATIO_NODE_RANK" in env else "SLURM_NODEID"
    others = "1" if nodes == 2 else f"1 to {nodes - 1}"
    fix = f"set DIFFRATIO_NODE_RANK to 0 on the node that runs DVC and {others} on the others"
    if name not in env:
        raise PipelineError(f"DIFFRATIO_NNODES = {nodes} but this node's rank is not set: {fix}")
    rank = _natural(env, name)
    if rank is None or rank >= nodes:
        raise PipelineError(f"{name} = {env[name]!r} is not a node rank of {nodes} nodes: {fix}")
    return rank


def _endpoint(env: Mapping[str, str], nodes: int) -> str:
    if "DIFFRATIO_RDZV_ENDPOINT" not in env:
        raise PipelineError(f"DIFFRATIO_NNODES = {nodes} but DIFFRATIO_RDZV_ENDPOINT is not set: set it to host:port "
                            f"of node 0 (the node that runs DVC), the same on every node, e.g. node0:29500")
    endpoint = env["DIFFRATIO_RDZV_ENDPOINT"].strip()
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PipelineError(f"DIFFRATIO_RDZV_ENDPOINT = {endpoint!r} is not host:port: set it to node 0's address "
                            f"and a free port, e.g. node0:29500")
    return endpoint


def rendezvous_args(env: Mapping[str, str], module: str) -> list[str]:
    """torchrun's options for this node's part of the rendezvous, from the environment; PipelineError when it is
    incomplete or malformed."""
    if "DIFFRATIO_NNODES" not in env:
        stray = [name for name in ("DIFFRATIO_NODE_RANK", "DIFFRATIO_RDZV_ENDPOINT", "DIFFRATIO_RDZV_TIMEOUT")
                 if name in env]
        if stray:
            raise PipelineError(f"{stray[0]} is set but DIFFRATIO_NNODES is not: set DIFFRATIO_NNODES to the number "
                                f"of nodes, or unset {' and '.join(stray)} to run on one node")
        return ["--standalone"]
    nodes = _natural(env, "DIFFRATIO_NNODES")
    if not nodes:
        raise PipelineError(f"DIFFRATIO_NNODES = {env['DIFFRATIO_NNODES']!r} is not a number of nodes: set it to "
                            f"1 or more, or unset it to run on one node")
    if nodes == 1:
        return ["--standalone"]
    rank, endpoint = _rank(env, nodes), _endpoint(env, nodes)
    timeout = _natural(env, "DIFFRATIO_RDZV_TIMEOUT") if "DIFFRATIO_RDZV_TIMEOUT" in env else 600
    if not timeout:
        raise PipelineError(f"DIFFRATIO_RDZV_TIMEOUT = {env['DIFFRATIO_RDZV_TIMEOUT']!r} is not a number of "
                            f"seconds: set it to 1 or more, or unset it (600)")
    return ["--nnodes", str(nodes), "--node-rank", str(rank), "--rdzv-backend", "static",
            "--rdzv-endpoint", endpoint, "--rdzv-id", module, "--rdzv-conf", f"timeout={timeout}"]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def end_with_starter() -> None:
    """SIGTERM this process (torchrun then ends its workers) when the process that started it ends: its parent,
    or, when the parent is a `sh -c` that did not exec this command (DVC runs commands in $SHELL or /bin/sh, and
    dash does not exec), the shell's parent: the shell would outlive a killed DVC, so a thread watches it."""
    die_with_parent()
    if sys.platform != "linux":
        return
    shell = os.getppid()
    try:
        argv = Path(f"/proc/{shell}/cmdline").read_bytes().split(b"\0")
        starter = _parent_of(shell)
    except OSError:
        return
    if Path(os.fsdecode(argv[0])).name.lstrip("-") not in SHELLS or b"-c" not in argv:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                orphaned = _parent_of(shell) != starter
            except OSError:
                return  # the shell ended: die_with_parent's signal
            if orphaned:
                os.kill(os.getpid(), signal.SIGTERM)
                return
    threading.Thread(target=watch, name="end-with-starter", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, help="processes on this node (default: compute.processes)")
    parser.add_argument("module", help="the stage's module, e.g. stages.train")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the stage")
    args = parser.parse_args(argv)
    try:
        nproc = load_params().compute.processes if args.nproc_per_node is None else args.nproc_per_node
        if nproc < 1:
            raise PipelineError(f"--nproc-per-node {nproc}: start 1 or more processes (compute.processes)")
        rendezvous = rendezvous_args(os.environ, args.module)
    except PipelineError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    end_with_starter()
    if nproc == 1 and rendezvous == ["--standalone"]:
        sys.argv = [args.module, *args.args]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return
    os.environ["DIFFRATIO_AGENT_PID"] = str(os.getpid())  # the workers' parent: see pipeline.runtime.start
    torchrun([*rendezvous, "--nproc-per-node", str(nproc), "-m", args.module, *args.args])


if __name__ == "__main__":
    main()
