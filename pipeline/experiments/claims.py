"""The paper's claims in miniature, on the configured data: one command queues a DVC experiment per
(variant, stage-2 seed), runs the queue, and tabulates mean ± std over seeds into metrics/claims.{json,md}.

    python -m pipeline.experiments.claims run       # queue, run (`dvc exp run --run-all`), then report
    python -m pipeline.experiments.claims report    # tabulate the finished experiments only

Variants change one knob against the committed params: DiffRatio (the params as they are), the vsd
baseline, a randomly initialised generator, and the other divergences. Every experiment shares the
teacher and the evaluation noise (top-level seed) and differs by `train.seed` only; DVC's run cache
skips what is unchanged. Run it from a clean, committed workspace: queued experiments start from HEAD.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from pipeline.artifacts import atomic_path, write_json
from pipeline.errors import PipelineError

VARIANTS = {  # name: the params it sets (on top of the committed params.yaml)
    "diffratio": {},
    "vsd": {"method": "vsd"},
    "random_init": {"train.init": "random"},
    "dikl": {"divergence": "dikl"},
    "difkl": {"divergence": "difkl"},
}
PREFIX = "claims"
METRICS = {  # column: (metrics file, key path)
    "fd": ("metrics/fid.json", ("generator", "fd_trained")),
    "seconds_per_step": ("metrics/train.json", ("seconds_per_step",)),
    "peak_memory_mib": ("metrics/train.json", ("peak_memory_mib",)),
    "auxiliary_parameters": ("metrics/train.json", ("auxiliary_parameters",)),
}


def experiment_name(variant: str, seed: int) -> str:
    return f"{PREFIX}-{variant.replace('_', '-')}-s{seed}"


def dvc(*args: str) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise PipelineError(f"`dvc {' '.join(args)}` failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def queue(variants: list[str], seeds: list[int]) -> None:
    for variant in variants:
        for seed in seeds:
            settings = {**VARIANTS[variant], "train.seed": seed}
            flags = [arg for key, value in settings.items() for arg in ("-S", f"{key}={value}")]
            dvc("exp", "run", "--queue", "-n", experiment_name(variant, seed), *flags)


def _walk(node, found: dict[str, dict]) -> None:
    """Collect {experiment name: its data} from `dvc exp show --json`, whatever its nesting; experiments still
    queued or running (their data are the base commit's) are left out."""
    if isinstance(node, dict):
        executor = node.get("executor")
        if isinstance(executor, dict) and executor.get("state") not in (None, "success"):
            return
        name, data = node.get("name"), node.get("data")
        if isinstance(name, str) and name.startswith(PREFIX + "-") and isinstance(data, dict):
            found[name] = data
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def _metric(data: dict, file: str, path: tuple[str, ...]):
    value = ((data.get("metrics") or {}).get(file) or {}).get("data") or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def collect(variants: list[str], seeds: list[int]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    _walk(json.loads(dvc("exp", "show", "--json", "--all-commits")), found)  # queued from any commit
    results = {}
    for variant in variants:
        runs = []
        for seed in seeds:
            data = found.get(experiment_name(variant, seed))
            scale = _metric(data, "metrics/scale.json", ()) if data else None
            if data is None or _metric(data, *METRICS["fd"]) is None:
                continue
            run = {"seed": seed, **{column: _metric(data, *where) for column, where in METRICS.items()}}
            for key, row in (scale or {}).items():
                if key.startswith("n") and isinstance(row, dict):
                    run[f"fd_{key}"] = row["fd"]
            runs.append(run)
        results[variant] = {"runs": runs, **summarise(runs)}
    return results


def summarise(runs: list[dict]) -> dict[str, dict]:
    columns = sorted({key for run in runs for key in run if key != "seed"})
    out = {}
    for column in columns:
        values = [run[column] for run in runs if run.get(column) is not None]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            out[column] = {"mean": statistics.fmean(values), "std": spread, "n": len(values)}
    return out


def markdown(results: dict[str, dict]) -> str:
    def cell(stats: dict | None, fmt: str) -> str:
        return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}} (n={stats['n']})" if stats else "—"

    lines = ["| variant | FD (1 NFE) | s / step | peak memory MiB | aux. params | FD at N = 1 / 8 (scale) |",
             "|---|---|---|---|---|---|"]
    for variant, r in results.items():
        scaled = f"{cell(r.get('fd_n1'), '.3f')} / {cell(r.get('fd_n8'), '.3f')}" if r.get("fd_n8") else "—"
        lines.append(f"| {variant} | {cell(r.get('fd'), '.3f')} | {cell(r.get('seconds_per_step'), '.3f')} | "
                     f"{cell(r.get('peak_memory_mib'), '.0f')} | {cell(r.get('auxiliary_parameters'), '.0f')} | "
                     f"{scaled} |")
    return "\n".join(lines) + "\n"


def report(variants: list[str], seeds: list[int], out: str = "metrics/claims") -> None:
    results = collect(variants, seeds)
    write_json(f"{out}.json", {"seeds": seeds, **results})
    with atomic_path(Path(f"{out}.md")) as tmp:
        tmp.write_text(markdown(results))
    print(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    try:
        if args.action == "run":
            queue(args.variants, args.seeds)
            subprocess.run(["dvc", "exp", "run", "--run-all"], check=True)
        report(args.variants, args.seeds)
    except (PipelineError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
