"""compute.threads: each process's CPU threads, shared out among the processes that run at once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runtime import queue_jobs, thread_count

CORES = len(os.sched_getaffinity(0))


def test_a_number_is_taken_as_it_is():
    assert thread_count(3, 1) == 3 and thread_count(1, 8) == 1


def test_auto_shares_the_cores_among_torchrun_processes(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert thread_count("auto", 1) == CORES
    assert thread_count("auto", 2) == max(1, CORES // 2)
    assert thread_count("auto", 4 * CORES) == 1  # never zero


@pytest.fixture
def two_queue_workers():
    """Two processes that look like `dvc exp queue-worker <node>` in /proc."""
    script = "import time; time.sleep(60)"
    workers = [subprocess.Popen([sys.executable, "-c", script, "exp", "queue-worker", f"dvc-exp-abc123-{n}@localhost"])
               for n in (1, 2)]
    for worker in workers:  # until each has exec'd: before that /proc shows the forked parent's command line
        while b"queue-worker" not in Path(f"/proc/{worker.pid}/cmdline").read_bytes():
            time.sleep(0.01)
    yield
    for worker in workers:
        worker.kill()
        worker.wait()


def test_auto_shares_the_cores_among_a_dvc_queues_jobs(monkeypatch, two_queue_workers):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # what DVC sets in a queued experiment's environment
    assert queue_jobs() == 2
    assert thread_count("auto", 1) == max(1, CORES // 2)
    monkeypatch.delenv("DVC_EXP_NAME")  # not in a queued experiment: the workers are someone else's business
    assert queue_jobs() == 1
