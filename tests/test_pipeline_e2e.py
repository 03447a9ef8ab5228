"""End to end: the real `dvc repro` on tiny params in a temporary copy of the repository, an interrupted
stage resumed by the next `dvc repro`, and an experiment compared with `dvc metrics diff`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TINY = {  # the default networks, trained briefly: about five minutes for the whole `dvc repro` on two slow cores
    "prepare": {"holdout": 200},
    "pretrain": {"batch_size": 128, "duration_images": 20480, "lr_rampup_images": 5000, "ema_halflife_images": 8000,
                 "log_every_images": 2560, "checkpoint_every_images": 2560},
    "train": {"batch_size": 64, "duration_images": 12800, "log_every_images": 1280, "checkpoint_every_images": 6400,
              "ema_halflife_images": 2000, "diagnostic_levels": 4, "diagnostic_samples": 64,
              "auxiliary_warmup_images": 1280, "auxiliary_steps": 1},  # the plumbing, not the critic's quality
    "reference": {"epochs": 10},
    "evaluation": {"set_size": 40, "num_sets": 5, "floor_sets": 5, "kid_subsets": 20},
    "battery": {"teacher_nfe": [9, 5, 3]},
    "sample": {"batch_size": 200, "nfe": 9},
    "verifier": {"max_steps": 20, "batch_size": 64, "validation_images": 60, "calibration_images": 60,
                 "test_images": 60},
    "scale": {"num_sets": 5, "num_candidates": [1, 2, 4], "batch_size": 100},
    "frontier": {"teacher_nfe": [3, 9]},
    "gradient_bias": {"budgets": [20, 50], "seeds": [0], "eval_samples": 1000, "width": 32, "batch_size": 64},
}


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repository holding the project's tracked files (not data/ or metrics/ outputs)."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("metrics/", "tests/")) or name == "dvc.lock":
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes((ROOT / name).read_bytes())
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(dest, "git", "init", "-q")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "tiny pipeline")
    return dest


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}


def run(cwd: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env())
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_dvc_repro_runs_the_whole_pipeline(repo):
    run(repo, "dvc", "repro", "encode", "reference")
    # Kill the pretrain stage once it has written a checkpoint: the next `dvc repro` must resume it.
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = repo / "data/checkpoints/pretrain/state.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "pretrain finished or failed before its first checkpoint"
    assert not (repo / "data/pretrain").exists()  # nothing half-written where the output goes

    output = run(repo, "dvc", "repro")
    assert "resuming pretrain from its checkpoint" in output
    assert not (repo / "data/checkpoints/pretrain").exists()

    metrics = json.loads((repo / "metrics/fid.json").read_text())
    space = metrics["primary"]
    assert space == "hybrid" and metrics["spaces"] == {"hybrid": "fd_hybrid"}
    assert metrics["teacher"]["nfe"] == 9 and metrics["teacher"]["num_samples"] == 200
    assert metrics["generator"]["nfe"] == metrics["generator_init"]["nfe"] == 1
    for row in ("real_floor", "teacher", "generator"):
        assert {"fd", "fd_sd", "kid", "kid_sd", "precision", "recall", "density", "coverage", "nn_distance",
                "copy_fraction"} <= set(metrics[row][space]) and "class_consistency" in metrics[row]
    assert metrics["teacher"][space]["fd_over_floor"] > 0 and "fd_ratio" in metrics["generator_vs_teacher"]
    # A short seeded DiffRatio run cuts the FD of the generator it starts from by at least a third (measured with
    # the default light critic: 4.8x from this teacher, 1.9x from one pretrained twice as long; the critics'
    # quality is compared over seeds in docs/critic.md, not here).
    assert metrics["generator"][space]["fd"] < 0.67 * metrics["generator_init"][space]["fd"]
    for grid in ("teacher", "generator_init", "generator", "scaled"):
        assert (repo / f"metrics/grids/{grid}.png").stat().st_size > 0
    verifier = json.loads((repo / "metrics/verifier.json").read_text())
    assert verifier["test"]["fitted"]["auc"] > 0.5 and set(verifier["calibration"]) == {"scale", "bias"}
    scale = json.loads((repo / "metrics/scale.json").read_text())
    assert scale["verifier"].startswith("fitted") and scale["calibration"] == verifier["calibration"]
    assert [scale[f"n{n}"]["generator_evals_per_output"] for n in (1, 2, 4)] == [1, 2, 4]
    # N = 1 is exactly the generator row: the same samples, scored set by set alike
    assert scale["n1"]["picked"][space]["fd"] == metrics["generator"][space]["fd"]
    assert "fd_ratio" in scale["n2"]["pick_over_uniform"]
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["generator"]["fd"] == metrics["generator"][space]["fd"] and summary["verifier"]["candidates"] == 4
    shown = run(repo, "dvc", "metrics", "show", "--json")
    shown = json.JSONDecoder().raw_decode(shown[shown.index("{"):])[0][""]["data"]  # stdout's JSON, before stderr
    assert list(shown) == ["metrics/summary.json"]  # the headline, not the detailed reports
    assert sum(len(row) for row in shown["metrics/summary.json"]["data"].values()) <= 30

    run(repo, "dvc", "repro", "analysis/dvc.yaml")  # the analysis stages, on request
    frontier = json.loads((repo / "metrics/frontier.json").read_text())
    points = ["teacher_nfe3", "teacher_nfe9", "one_step_n1", "one_step_n2", "one_step_n4"]
    assert frontier["reference"] == "teacher_nfe9" and [k for k in frontier if k in points] == points
    assert [frontier[name]["nfe"] for name in points] == [3, 9, 1, 4, 8]
    # the same sets as the fid stage's teacher row (drawn set by set there, in batches of 200 here) and N = 1
    assert frontier["teacher_nfe9"][space]["fd"] == pytest.approx(metrics["teacher"][space]["fd"], rel=1e-4)
    assert frontier["one_step_n1"][space]["fd"] == scale["n1"]["picked"][space]["fd"]
    assert frontier["teacher_nfe9"]["vs_teacher_nfe9"]["fd_ratio"] == 1.0
    battery = json.loads((repo / "metrics/battery.json").read_text())
    assert "copy_fraction" in battery["checks"][space]["separated_by"]["training copies"]
    assert {"teacher 9 NFE", "teacher 3 NFE", "one per class"} <= set(battery)
    bias = json.loads((repo / "metrics/gradient_bias.json").read_text())
    assert set(bias["vsd"]) == {"steps_20", "steps_50"} and "diffratio_dijs" in bias
    assert "up to date" in run(repo, "dvc", "status")


def test_experiments_and_metrics_diff(repo):
    run(repo, "dvc", "repro")  # a no-op after the test above
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline run (dijs)")
    # stage 2 a fifth as long: these runs check what DVC records and compares, not what training reaches
    short = ("-S", f"train.duration_images={TINY['train']['duration_images'] // 5}")
    output = run(repo, "dvc", "exp", "run", "-S", "divergence=dikl", "-S", "train.ratio_augment.p=0.2", *short)
    assert "Running stage 'train'" in output and "Running stage 'pretrain'" not in output
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["divergence"] == "dikl" and train["ratio_r1"] == tiny_params()["train"]["ratio_r1"] > 0
    assert train["ratio_augment_p"] == 0.2
    diff = run(repo, "dvc", "metrics", "diff").splitlines()
    assert len(diff) <= 40 and any("generator.fd " in line for line in diff[:6])  # the headline leads
    assert not any("teacher.fd " in line for line in diff)  # the teacher did not change
    assert "divergence" in run(repo, "dvc", "exp", "show", "--csv").splitlines()[0]

    output = run(repo, "dvc", "exp", "run", "-S", "divergence=dijs", "-S", "method=vsd", *short)  # the baseline
    assert "Running stage 'train'" in output and "Running stage 'pretrain'" not in output
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["method"] == "vsd" and train["auxiliary"] == "fake_score" and train["divergence"] == "dikl"
    assert train["ratio_r1"] == train["ratio_augment_p"] == 0.0  # no ratio net for R1 or augmentation to act on
    assert train["auxiliary_parameters"] == train["generator_parameters"]  # a full score net, unlike the ratio net
    scale = json.loads((repo / "metrics/scale.json").read_text())
    assert scale["verifier"] is None and "n1" in scale and "n2" not in scale
    assert json.loads((repo / "metrics/verifier.json").read_text())["verifier"] is None
