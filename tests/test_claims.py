"""The claims report: records from an experiment's metrics, seed-by-seed comparisons and their verdicts."""

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.experiments import claims


def fid_metrics(fd: float, recall: float) -> dict:
    suite = {name: 1.0 for name in claims.SUITE} | {"fd": fd, "recall": recall, "kid": 0.01}
    row = suite | {f"{name}_sd": 0.1 for name in claims.SUITE}
    return {"primary": "hybrid", "generator": {"hybrid": row, "class_consistency": 0.99},
            "generator_vs_teacher": {"fd_ratio": fd / 2}}


def test_a_run_records_the_generator_suite_scaling_and_cost():
    record = claims.run_record(fid_metrics(1.5, 0.9), {"n8": {"pick_over_uniform": {"fd_ratio": 0.95}}},
                               {"seconds_per_step": 0.2, "peak_memory_mib": 100, "auxiliary_parameters": 7},
                               {"test": {"trained": {"auc": 0.7, "memorisation_auc": 0.55}, "fitted": {"auc": 0.9}}})
    assert record["fd"] == 1.5 and record["recall"] == 0.9 and record["fd_eval_sd"] == 0.1
    assert record["ratio_auc"] == 0.7 and record["memorisation_auc"] == 0.55  # as stage 2 left it, not refitted
    assert record["fd_over_teacher"] == 0.75 and record["fd_n8_over_uniform"] == 0.95
    assert record["class_consistency"] == 0.99 and record["auxiliary_parameters"] == 7


def test_differences_are_resolved_only_beyond_their_spread_over_seeds():
    base = {s: claims.run_record(fid_metrics(1.0, 0.9), None, None) for s in (0, 1, 2)}
    worse = {s: claims.run_record(fid_metrics(f, 0.9 * r), None, None)
             for s, f, r in ((0, 2.0, 1.1), (1, 2.2, 0.8), (2, 1.9, 1.05))}
    verdict = claims.compare(worse, base)
    assert verdict["fd_ratio"]["mean"] == pytest.approx(2.0333, rel=1e-3) and verdict["fd_ratio"]["resolved"]
    assert not verdict["recall_ratio"]["resolved"]  # 0.98 ± 0.16: within its spread
    assert verdict["kid_minus"]["mean"] == 0 and not verdict["kid_minus"]["resolved"]
    summary = claims.summarise(list(worse.values()))
    assert summary["fd"]["n"] == 3 and summary["fd"]["sd"] == pytest.approx(0.1528, rel=1e-3)
    text = claims.tables({"diffratio": base, "vsd": worse}, {"diffratio": claims.summarise(list(base.values())),
                                                             "vsd": summary}, {"vsd": verdict})
    assert "vsd vs diffratio" in text and "**resolved**" in text and "(unresolved)" in text
    # a variant with one seed in common has no paired verdicts: its row is dashes, with the table's columns
    lone = claims.tables({"diffratio": base, "vsd": worse}, {"vsd": summary}, {"vsd": {}}, base="diffratio")
    row = next(line for line in lone.splitlines() if line.startswith("| vsd vs diffratio"))
    header = next(line for line in lone.splitlines() if line.startswith("| variant | fd_ratio"))
    assert row.count("|") == header.count("|") and "-" in row


def test_the_critic_is_read_where_the_generator_takes_its_update():
    header = "images,sigma,auc,h_p05,h_mean,h_p95,update_share\n"
    rows = ("100,0.01,0.9,0.1,0.2,0.3,0.0\n"  # separates well, but takes none of the update
            "100,0.5,0.6,0.24,0.25,0.26,0.75\n"
            "100,2.0,0.5,0.2,0.25,0.3,0.25\n")
    over_training = "images,gradient_agreement_training\n50,0.4\n100,0.8\n"
    found = claims.critic_where_updated(header + rows, over_training)
    assert found["auc_at_update"] == pytest.approx(0.75 * 0.6 + 0.25 * 0.5)
    assert found["h_spread_at_update"] == pytest.approx(0.75 * 0.08 + 0.25 * 0.4)
    assert found["gradient_agreement"] == 0.8  # at the end of training
    assert "gradient_agreement" not in claims.critic_where_updated(header + rows)
    assert claims.critic_where_updated(header + "100,0.5,0.6,0.2,0.25,0.3,0.0\n") == {}  # no update anywhere


def test_duration_variants_are_multiples_of_the_committed_duration():
    import yaml
    default = yaml.safe_load(open("params.yaml"))["train"]["duration_images"]
    workspace = claims.workspace_params()
    assert claims.settings("twice_as_long", 3, workspace)["train.duration_images"] == 2 * default
    assert claims.settings("four_times_as_long", 3, workspace) == {"train.duration_images": 4 * default,
                                                                  "train.seed": 3}
    same_time = claims.settings("half_batch_same_time", 3, workspace)["train.duration_images"]
    assert isinstance(same_time, int) and same_time == round(0.8 * default)  # a whole number of images


def test_an_experiment_counts_only_with_the_params_the_variant_asks_for(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("method: diffratio\ntrain:\n  seed: 0\n  auxiliary_steps: 4\n  betas: [0.0, 0.999]\n")
    expected = claims.expected_params("one_ratio_step", 3, claims.workspace_params(params_file))
    assert expected == {"method": "diffratio", "train.seed": 3, "train.auxiliary_steps": 1, "train.betas": [0.0, 0.999]}
    stale = {**expected, "train.auxiliary_steps": 4}  # the same name, run under other defaults
    assert claims.matching([("a", expected), ("b", stale)], expected) == "a"
    assert claims.matching([("b", stale)], expected) is None
    assert claims.matching([("a", expected), ("b", stale)], None) == "b"  # --any-params: the name alone


def test_finished_experiments_are_read_from_their_git_refs(tmp_path, monkeypatch):
    """A finished experiment is a ref refs/exps/<baseline 2/38>/<name> on a commit holding its params.yaml; other
    refs under refs/exps (the queue's stash, other names) are not experiments of this tool."""
    monkeypatch.chdir(tmp_path)

    def git(*args: str) -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              env={**os.environ, **env}).stdout.strip()

    git("init", "-q")
    commits = []
    for seed in (1, 2):
        Path("params.yaml").write_text(f"divergence: dikl\ntrain:\n  seed: {seed}\n")
        git("add", "params.yaml")
        git("commit", "-qm", f"seed {seed}")
        commits.append(git("rev-parse", "HEAD"))
    git("update-ref", f"refs/exps/ab/{'c' * 38}/claims-dikl-s1", commits[0])
    git("update-ref", f"refs/exps/ab/{'c' * 38}/other-s2", commits[1])
    git("update-ref", "refs/exps/celery/stash", commits[1])
    assert claims.finished() == {"claims-dikl-s1": [(commits[0], {"divergence": "dikl", "train.seed": 1})]}


