"""The paper's claims in miniature, on the configured data: one command queues a DVC experiment per
(variant, stage-2 seed), runs the queue, and tabulates the metric suite over seeds into metrics/claims.{json,md}.

    python -m pipeline.experiments.claims run       # queue, run (`dvc exp run --run-all`), then report
    python -m pipeline.experiments.claims report    # tabulate the finished experiments only
    python -m pipeline.experiments.claims run --variants vsd vsd_aux5 --seeds 1 2 --out metrics/vsd_tuning

Variants change one knob against the committed params: DiffRatio (the params as they are), the vsd
baseline (as it is, and tuned), a randomly initialised generator, and the other divergences. TUNING holds the
baseline's own tuning (and its noise levels tried on DiffRatio), run on stage-2 seeds the claims are not
reported on; DURATION is stage 2 run longer; ABLATION changes one of stage 2's knobs at a time. Every
experiment shares the teacher, the data and the evaluation sets (top-level seed) and differs by `train.seed`
only, so variants are compared seed by seed: for each seed the ratio of a variant's metric to DiffRatio's (KID:
the difference), then the mean and sd of those over seeds. A
difference is called resolved when the mean of the paired differences is more than twice their sd over seeds
away from zero; otherwise it is reported as unresolved.
DVC's run cache skips what is unchanged. Run it from a clean, committed workspace: queued experiments start
from HEAD. An experiment counts for a (variant, seed) only if its params are the workspace's params.yaml with the
variant's settings and the seed on top: a run made under other defaults (an earlier commit's) is left out of the
report and is not reused by `run`, which queues only what has not run with these params. `--any-params` matches
by name alone, for reports of runs made under earlier defaults.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import yaml

from pipeline.artifacts import atomic_path, write_json
from pipeline.errors import PipelineError
from pipeline.evaluation.metrics import mean_sd

EDM_NOISE = {f"train.{loss}.{key}": value for loss in ("auxiliary_noise", "generator_noise")
             for key, value in (("p_mean", -1.2), ("p_std", 1.2))}  # EDM's training noise levels, both losses
# The baseline as it was tuned: one fake-score step per generator step (five were worse: docs/results.md), whatever
# number of ratio steps DiffRatio's default takes.
VSD = {"method": "vsd", "train.auxiliary_steps": 1}
VARIANTS = {  # name: the params it sets (on top of the committed params.yaml)
    "diffratio": {},
    "vsd": VSD,
    "vsd_tuned": {**VSD, **EDM_NOISE},  # the best of TUNING on seeds 1 and 2 (README)
    "random_init": {"train.init": "random"},
    "dikl": {"divergence": "dikl"},
    "difkl": {"divergence": "difkl"},
}
# The baseline tuned on its own, one knob at a time from DiffRatio's params, on tuning seeds that the claims are
# not reported on: auxiliary (fake score) steps per generator step, EDM's noise levels (on DiffRatio's [0.002, 5]),
# a 5x auxiliary rate; and the winning noise levels given back to DiffRatio.
TUNING = {
    "vsd_aux2": {**VSD, "train.auxiliary_steps": 2},
    "vsd_aux5": {**VSD, "train.auxiliary_steps": 5},
    "vsd_edm_noise": {**VSD, **EDM_NOISE},
    "vsd_aux_lr": {**VSD, "train.auxiliary_lr": 0.001},
    "diffratio_edm_noise": EDM_NOISE,  # the noise levels that tuned the baseline, given to DiffRatio too
}
# The two knobs that each lifted the digits' lowest recalls (R1 x10 and augmentation, seeds 1-5), together; chosen
# on those seeds, so reported on seeds 6-10.
R1_STRONG_AUGMENT = {"train.ratio_r1": 1.0, "train.ratio_augment.p": 0.25}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"seed": 0}} -> {"train.seed": 0}: params as `-S` names them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def workspace_params(params_file: Path = Path("params.yaml")) -> dict:
    return flatten(yaml.safe_load(params_file.read_text()))


class Times(float):
    """A variant's value that is this multiple of the workspace's value of the same key (resolved by `settings`,
    rounded to an integer)."""


DURATION = {  # stage 2 run longer, paired with the default duration seed by seed
    "twice_as_long": {"train.duration_images": Times(2)},
    "four_times_as_long": {"train.duration_images": Times(4)},
    "four_times_r1_strong": {"train.duration_images": Times(4), "train.ratio_r1": 1.0},  # does 10x R1 hold it?
    "four_times_augment": {"train.duration_images": Times(4), "train.ratio_augment.p": 0.25},  # augmenting?
    "four_times_r1_strong_augment": {"train.duration_images": Times(4), **R1_STRONG_AUGMENT},
}
# What keeps stage 2's ratio net informative and honest, one knob at a time from the defaults (README: "A stage 2
# that holds"): an R1 penalty on real data (a default of params.yaml since that ablation, off in the presets; r1
# sets it, no_r1 takes it away) and decoupled weight decay against memorising the training images, two ratio steps
# per generator step, the generator's update mass put where the ratio net is trained (w = 1 on the same log-normal:
# equal in expectation to w = s^2 on a log-normal shifted by -2 p_std^2; or each sample's update scaled to unit mean
# magnitude, whatever its level), a shorter and a longer EMA, the balance of the two players (the ratio net's rate
# halved or doubled, the generator's doubled: on the photographs the ratio net's loss falls well below log 4 late in
# training), and the ratio net's inputs augmented (shifts; shifts and flips where the data are
# mirror-symmetric, as photographs are).
ABLATION = {
    "r1": {"train.ratio_r1": 0.1},
    "no_r1": {"train.ratio_r1": 0.0},
    "r1_strong": {"train.ratio_r1": 1.0},
    "weight_decay": {"train.auxiliary_weight_decay": 1.0},
    "ratio_steps2": {"train.auxiliary_steps": 2},
    "matched_noise": {"train.weighting": "uniform"},
    "normalized_weighting": {"train.weighting": "normalized"},
    "ema_short": {"train.ema_halflife_images": 2500},
    "ema_long": {"train.ema_halflife_images": 10000},
    "ema_shorter": {"train.ema_halflife_images": 1250},  # the digits' recall target allows FD up to the teacher's
    "slow_ratio": {"train.auxiliary_lr": 0.0001},
    "fast_generator": {"train.generator_lr": 0.0004},
    "fast_ratio": {"train.auxiliary_lr": 0.0004},
    "augment": {"train.ratio_augment.p": 0.25},
    "augment_xflip": {"train.ratio_augment.p": 0.25, "train.ratio_augment.xflip": True},
    "r1_strong_augment": R1_STRONG_AUGMENT,
    # The critic's redesign (docs/critic.md), against today's critic (the spatial head, the inverse-sigma logit scale
    # and the balanced level weighting, the default since docs/critic.md's held-out seeds): a warm-up of the ratio
    # net before the generator moves; the same head and scale without the balanced weighting; the first design.
    "warmup": {"train.auxiliary_warmup_images": 3200},
    "spatial_inverse_sigma": {"train.ratio_net.head": "spatial", "train.ratio_net.logit_scale": "inverse_sigma",
                              "train.ratio_level_weighting": "none"},
    "first_critic": {"train.ratio_net.head": "pooled", "train.ratio_net.logit_scale": "none",
                     "train.ratio_level_weighting": "none"},
    # The two players' time scales: with one ratio step per generator step the critic ends at chance at every
    # level while a net fitted further to the final generator is not (docs/critic.md); four ratio steps (the
    # default since), or the ratio net's rate 5x; one_ratio_step gives the earlier default back.
    "ratio_steps4": {"train.auxiliary_steps": 4},
    "one_ratio_step": {"train.auxiliary_steps": 1},
    "fast_ratio_5x": {"train.auxiliary_lr": 0.001},
    # The dose above the default: recall rose with each doubling of the ratio steps (1, 2, 4) on the digits.
    "ratio_steps8": {"train.auxiliary_steps": 8},
    # The divergences re-decided where the critic is informed (four ratio steps: pair with --base ratio_steps4).
    "dikl_ratio_steps4": {"divergence": "dikl", "train.auxiliary_steps": 4},
    "difkl_ratio_steps4": {"divergence": "difkl", "train.auxiliary_steps": 4},
    # With four ratio steps two batches' generator gradients agree less (cosine 0.24 against 0.43): one level per
    # stratum of the generator's noise distribution within each batch, to cut the variance over levels.
    "stratified_generator_levels": {"train.generator_noise.stratified": True},
    # A lighter ratio net (the memory ledger's case): the teacher's encoder cut after its first k blocks. On the
    # digits' encoder (three down-path blocks, then two middle ones): 3 drops the middle block (0.20x the teacher's
    # parameters, against 0.45x), 2 also the last down-path block, which widens the features (0.10x).
    "ratio_encoder_blocks3": {"train.ratio_net.encoder_blocks": 3},
    "ratio_encoder_blocks2": {"train.ratio_net.encoder_blocks": 2},
    # Stage 2 within the time budget of the slowest 2-core machine (docs/critic.md): R1 on one real sample in four
    # (its double backward is half a ratio step); that with the lighter ratio net (the default since); targets
    # bootstrapped from half the level, half the label's.
    "r1_subsample4": {"train.ratio_r1_subsample": 4},
    "light_critic_r1_subsample4": {"train.ratio_net.encoder_blocks": 3, "train.ratio_r1_subsample": 4},
    # The earlier default critic (the whole encoder, R1 on every real sample), for comparisons with the light one.
    "previous_critic": {"train.ratio_net.encoder_blocks": "all", "train.ratio_r1_subsample": 1},
    "bootstrap": {"train.ratio_bootstrap.lower": 0.5, "train.ratio_bootstrap.label_weight": 0.5},
    # Twice the duration lifted recall through the critic's updates, not the generator's reach (docs/critic.md):
    # the same images in batches half as large, so both players take twice the updates at about the same cost.
    "half_batch": {"train.batch_size": 64},
    # The same at about the default's time: a step at batch 64 costs about 0.62x one at 128 on a CPU, so 0.8x the
    # images (352 steps of 64 against 220 of 128).
    "half_batch_same_time": {"train.batch_size": 64, "train.duration_images": Times(0.8)},
    # The recall lost is the sparse tail, and the generator starts without it: D(2.5 z; 2.5) is near each class's
    # mean (recall 0.14, the sparsest fifth 0.10 on the digits). The denoiser applied once at a lower level gives
    # a spread start (t_init 1.5: recall 0.37; 1.0: 0.56, the sparsest fifth 0.46; docs/critic.md).
    "init_t1_5": {"train.t_init": 1.5},
    "init_t1": {"train.t_init": 1.0},
    # Samples pile up where the data are dense (density 1.25, the floor's 1.0) and miss the sparse tail: what pulls
    # a generated sample toward a region it misses is the critic's gradient where the noisy distributions overlap,
    # at larger s than the update's mass (0.1-0.6). The generator's levels moved up, the critic's left as they are.
    "generator_levels_up": {"train.generator_noise.p_mean": -2.0},
    "generator_levels_up2": {"train.generator_noise.p_mean": -1.5},
    # The same levels for the critic too, so that it is trained where the generator now updates: recall 1.03x on
    # tuning seeds 0-1, 0.99x (lower on every seed) with FD 1.08x on held-out seeds 20-24 (docs/critic.md).
    "both_levels_up2": {"train.generator_noise.p_mean": -1.5, "train.auxiliary_noise.p_mean": -1.5},
    "both_levels_up3": {"train.generator_noise.p_mean": -1.0, "train.auxiliary_noise.p_mean": -1.0},
    # The raw generator fills the sparse fifth of the real manifold about as the floor does and its EMA does not
    # (critic_by_density), while the critic learns from the raw one: the critic judges the sampled (EMA) generator.
    "critic_on_ema": {"train.auxiliary_against": "ema"},
    "critic_on_both": {"train.auxiliary_against": "mixed"},
    # The EMA pulls the samples of a generator that still moves toward the dense middle; both players' rates fall
    # linearly to 0 over the last half (or quarter) of stage 2's 28,160 images, so that the raw generator stops
    # where it is.
    "lr_rampdown_half": {"train.lr_rampdown_images": 14080},
    "lr_rampdown_quarter": {"train.lr_rampdown_images": 7040},
    # The digits' target asks FD only to stay at most the teacher's (6.8, the default's is 1.6): the shorter EMA and
    # the annealed rates, each of which traded a little FD for recall on tuning seeds 0-1, together (defined, not run).
    "ema_short_rampdown_half": {"train.ema_halflife_images": 2500, "train.lr_rampdown_images": 14080},
}
EVERY = {**VARIANTS, **TUNING, **DURATION, **ABLATION}
BASE = "diffratio"  # what the other variants are compared with, seed by seed, unless --base says otherwise
PREFIX = "claims"
EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/(?P<name>[^/]+)")
# of the generator row
SUITE = ("fd", "kid", "precision", "recall", "recall_tail", "density", "coverage", "nn_distance")
RESOLVED = 2.0  # a paired difference is resolved beyond this many sds (over seeds) from zero


def experiment_name(variant: str, seed: int) -> str:
    return f"{PREFIX}-{variant.replace('_', '-')}-s{seed}"


def dvc(*args: str) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise PipelineError(f"`dvc {' '.join(args)}` failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def settings(variant: str, seed: int, workspace: dict) -> dict:
    """What (variant, seed) sets on top of the workspace's params (flat), multiples resolved against them."""
    return {**{key: round(value * workspace[key]) if isinstance(value, Times) else value
               for key, value in EVERY[variant].items()}, "train.seed": seed}


def expected_params(variant: str, seed: int, workspace: dict) -> dict:
    """The params an experiment of (variant, seed) runs with: the workspace's (flat), the variant and the seed."""
    return {**workspace, **settings(variant, seed, workspace)}


def matching(candidates: list[tuple[str, dict]], expected: dict | None) -> str | None:
    """The commit of the finished experiment among `candidates` ((commit, flat params), all of one name) whose params
    are `expected`; None if none is. With `expected` None (`--any-params`), the last one found."""
    if expected is None:
        return candidates[-1][0] if candidates else None
    hits = [rev for rev, params in candidates if params == expected]
    return hits[-1] if hits else None


def queue(variants: list[str], seeds: list[int], found: dict[str, list[tuple[str, dict]]]) -> None:
    """Queue each (variant, seed) that has no finished experiment with its params among `found`."""
    workspace = workspace_params()
    for variant in variants:
        for seed in seeds:
            name = experiment_name(variant, seed)
            if matching(found.get(name, []), expected_params(variant, seed, workspace)):
                print(f"claims: {name} has run with these params; reusing it")
                continue
            flags = [arg for key, value in settings(variant, seed, workspace).items()
                     for arg in ("-S", f"{key}={value}")]
            dvc("exp", "run", "--queue", "-n", name, *flags)


def finished() -> dict[str, list[tuple[str, dict]]]:
    """Every finished claims experiment, from any commit: {name: [(commit, flat params), ...]}, oldest first. DVC
    keeps a finished experiment as the git ref refs/exps/<baseline commit, split 2/38>/<name> on its result commit
    (queued, running and failed ones have none), so the refs and each commit's params.yaml say it all, in seconds
    (`dvc exp show --all-commits` took minutes over this repository's history)."""
    listed = subprocess.run(["git", "for-each-ref", "--sort=committerdate", "--format=%(objectname) %(refname)",
                             "refs/exps/"], capture_output=True, text=True, check=True).stdout
    found: dict[str, list[tuple[str, dict]]] = {}
    for line in listed.splitlines():
        rev, ref = line.split(" ", 1)
        match = EXPERIMENT_REF.fullmatch(ref)
        if match and match["name"].startswith(PREFIX + "-"):
            params = yaml.safe_load(_committed(rev, "params.yaml") or "") or {}
            found.setdefault(match["name"], []).append((rev, flatten(params)))
    return found


def _committed(rev: str, file: str) -> str | None:
    """A file an experiment committed, read from its commit: the detailed reports are not DVC metrics
    (metrics/summary.json is), but every experiment's commit holds them."""
    shown = subprocess.run(["git", "show", f"{rev}:{file}"], capture_output=True, text=True, check=False)
    return shown.stdout if shown.returncode == 0 else None


def _report(rev: str, file: str) -> dict | None:
    text = _committed(rev, file)
    return json.loads(text) if text is not None else None


def critic_where_updated(noise_levels_csv: str, over_training_csv: str | None = None) -> dict:
    """The critic as stage 2 left it, where the generator takes its update (metrics/train_noise_levels.csv): the
    ratio net's AUC and the spread of the divergence's weight h over samples, (h_p95 - h_p05) / h_mean, each
    averaged over the noise ladder with the levels' shares of the update as weights; and, from the last row of
    metrics/train_noise_levels_over_training.csv, the agreement of two batches' generator gradients at the
    training distribution. A flat h (spread near 0) means every divergence gives the same update."""
    levels = list(csv.DictReader(io.StringIO(noise_levels_csv)))
    shares = [float(r["update_share"]) for r in levels]
    if not levels or sum(shares) <= 0:
        return {}

    def weighted(values: list[float]) -> float:
        return sum(w * v for w, v in zip(shares, values)) / sum(shares)

    out = {"auc_at_update": weighted([float(r["auc"]) for r in levels]),
           "h_spread_at_update": weighted([(float(r["h_p95"]) - float(r["h_p05"])) / float(r["h_mean"])
                                           for r in levels])}
    over_training = list(csv.DictReader(io.StringIO(over_training_csv or "")))
    if over_training:
        out["gradient_agreement"] = float(over_training[-1]["gradient_agreement_training"])
    return out


def run_record(fid: dict, scale: dict | None, train: dict | None, verifier: dict | None = None) -> dict:
    """What one experiment contributes: the generator row's suite in the primary space (means over the
    evaluation sets, and their sd), its paired ratio to the teacher, scaling at N = 8, cost, and the ratio net as
    stage 2 left it, on held-out test images: its AUC against the EMA generator's samples (informative: above
    0.5) and between training and held-out real images (memorising: away from 0.5)."""
    space = fid["primary"]
    row = fid["generator"][space]
    scored = [name for name in SUITE if name in row]  # runs from before recall_tail lack it
    record = {name: row[name] for name in scored}
    record.update({f"{name}_eval_sd": row[f"{name}_sd"] for name in scored})
    record["class_consistency"] = fid["generator"].get("class_consistency")
    record["fd_over_teacher"] = fid["generator_vs_teacher"]["fd_ratio"]
    if scale and "n8" in scale:
        record["fd_n8_over_uniform"] = scale["n8"]["pick_over_uniform"]["fd_ratio"]
    for key in ("seconds_per_step", "peak_memory_mib", "auxiliary_parameters"):
        record[key] = (train or {}).get(key)
    trained = ((verifier or {}).get("test") or {}).get("trained") or {}
    record["ratio_auc"], record["memorisation_auc"] = trained.get("auc"), trained.get("memorisation_auc")
    return record


def collect(variants: list[str], seeds: list[int], any_params: bool = False) -> dict[str, dict]:
    found, workspace = finished(), workspace_params()
    runs: dict[str, dict[int, dict]] = {}
    for variant in variants:
        runs[variant] = {}
        for seed in seeds:
            name = experiment_name(variant, seed)
            rev = matching(found.get(name, []), None if any_params else expected_params(variant, seed, workspace))
            if rev is None and found.get(name):
                print(f"claims: {name} ran only with other params than params.yaml's (see --any-params); left out")
            fid = _report(rev, "metrics/fid.json") if rev else None
            if fid and "primary" in fid:  # finished, with the metric suite
                runs[variant][seed] = run_record(fid, *(_report(rev, f"metrics/{name}.json")
                                                        for name in ("scale", "train", "verifier")))
                levels = _committed(rev, "metrics/train_noise_levels.csv")
                if levels:
                    runs[variant][seed].update(critic_where_updated(
                        levels, _committed(rev, "metrics/train_noise_levels_over_training.csv")))
    return runs


def summarise(records: list[dict]) -> dict:
    """Mean and sd over seeds of every numeric column."""
    columns = [key for key in records[0] if isinstance(records[0][key], (int, float))] if records else []
    out = {}
    for column in columns:
        values = [r[column] for r in records if r.get(column) is not None]
        if values:
            mean, sd = mean_sd(values)
            out[column] = {"mean": mean, "sd": sd, "n": len(values)}
    return out


def compare(variant_runs: dict[int, dict], base_runs: dict[int, dict]) -> dict:
    """Seed by seed, the variant against the base: ratios (KID: differences) of the suite, mean and sd over
    the seeds both have, and whether the difference is resolved."""
    seeds = sorted(set(variant_runs) & set(base_runs))
    out = {}
    for name in SUITE:
        if any(name not in runs[s] for runs in (variant_runs, base_runs) for s in seeds):
            continue
        if name == "kid":
            values = [variant_runs[s][name] - base_runs[s][name] for s in seeds]
            centre, key = 0.0, "kid_minus"
        else:
            values = [variant_runs[s][name] / base_runs[s][name] for s in seeds]
            centre, key = 1.0, f"{name}_ratio"
        if len(values) < 2:
            continue
        mean, sd = mean_sd(values)
        out[key] = {"mean": mean, "sd": sd, "n": len(values), "resolved": abs(mean - centre) > RESOLVED * sd}
    return out


def tables(runs: dict[str, dict[int, dict]], summaries: dict, comparisons: dict, base: str = BASE) -> str:
    def cell(stats: dict | None, fmt: str = ".3g") -> str:
        if not stats:
            return "-"
        return f"{stats['mean']:{fmt}} ± {stats['sd']:{fmt}}" if stats["sd"] is not None else f"{stats['mean']:{fmt}}"

    columns = (*SUITE, "class_consistency", "fd_over_teacher", "fd_n8_over_uniform", "ratio_auc",
               "memorisation_auc", "auc_at_update", "h_spread_at_update", "gradient_agreement", "seconds_per_step")
    lines = ["Mean ± sd over stage-2 seeds (each seed's value is the mean over its evaluation sets).", "",
             "| variant | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for variant, summary in summaries.items():
        lines.append(f"| {variant} | {len(runs[variant])} | " + " | ".join(cell(summary.get(c)) for c in columns)
                     + " |")
    compared = ["kid_minus" if name == "kid" else f"{name}_ratio" for name in SUITE]  # compare()'s keys
    lines += ["", f"Paired with {base} seed by seed: ratio (KID: difference), mean ± sd over seeds; "
              f"**resolved** when more than {RESOLVED:g} sd from no difference (- : fewer than 2 seeds in common).",
              "", "| variant | " + " | ".join(compared) + " |", "|---" * (1 + len(compared)) + "|"]
    for variant, comparison in comparisons.items():
        lines.append(f"| {variant} vs {base} | " + " | ".join(
            cell(comparison[key]) + (" **resolved**" if comparison[key]["resolved"] else " (unresolved)")
            if key in comparison else "-" for key in compared) + " |")
    return "\n".join(lines) + "\n"


def report(variants: list[str], seeds: list[int], out: str = "metrics/claims", base: str = BASE,
           any_params: bool = False) -> None:
    runs = collect(variants, seeds, any_params)
    summaries = {v: summarise(list(r.values())) for v, r in runs.items() if r}
    comparisons = {v: compare(runs[v], runs[base]) for v in runs if v != base and runs[v] and runs.get(base)}
    write_json(f"{out}.json", {"seeds": seeds, "resolved_beyond_sds": RESOLVED,
                               "variants": {v: {"runs": {str(s): r for s, r in runs[v].items()},
                                                "summary": summaries.get(v)} for v in runs},
                               "compared_with_" + base: comparisons})
    text = tables(runs, summaries, comparisons, base)
    with atomic_path(Path(f"{out}.md")) as tmp:
        tmp.write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--variants", nargs="+", choices=list(EVERY), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="metrics/claims", help="the report's path, without .json / .md")
    parser.add_argument("--base", choices=list(EVERY), default=BASE, help="the variant the others are paired with")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at once (compute.threads: auto then "
                        "gives each its share of the cores)")
    parser.add_argument("--any-params", action="store_true", help="report: take an experiment by its name alone, "
                        "whatever params it ran with (runs made under earlier defaults)")
    args = parser.parse_args()
    try:
        if args.action == "run":
            queue(args.variants, args.seeds, finished())
            subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", str(args.jobs)], check=True)
        report(args.variants, args.seeds, args.out, args.base, args.any_params)
    except (PipelineError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
