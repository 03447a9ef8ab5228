"""Run the whole pipeline under a preset in a scratch copy of the repository, and keep its metrics beside the
default run's, so that results on other data are committed and reproducible without touching params.yaml.

    python -m pipeline.experiments.preset_run photos                      # -> metrics/photos/
    python -m pipeline.experiments.preset_run photos --extractor-choice   # also the feature-space choice there

The copy (`.runs/<preset>/`, git-ignored) holds the repository's tracked files with presets/<preset>.yaml as
its params.yaml, in a git repository of its own; `dvc repro` there reruns only what changed since the last
run. Its metrics/ (JSON, CSV and grids) are then copied to metrics/<preset>/, over the files of the same names.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

RUNS = Path(".runs")
SKIP = ("metrics/", "tests/", "dvc.lock")  # outputs of the run, and what it does not need


def copy_repository(root: Path, dest: Path, params_text: str) -> None:
    """The tracked files of `root` (but SKIP) into `dest`, `params_text` as params.yaml, committed in a git
    repository of dest's own (DVC needs one)."""
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(SKIP) or not (root / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, dest / name)
    (dest / "params.yaml").write_text(params_text)
    git = ["git", "-c", "user.name=pipeline", "-c", "user.email=pipeline@localhost"]
    if not (dest / ".git").exists():
        subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "preset run", "--allow-empty"], cwd=dest, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="a file presets/<preset>.yaml")
    parser.add_argument("--extractor-choice", action="store_true",
                        help="also run pipeline.experiments.extractor_choice on the preset's data")
    args = parser.parse_args()
    root = Path.cwd()
    preset = root / "presets" / f"{args.preset}.yaml"
    if not preset.is_file():
        raise SystemExit(f"error: {preset} does not exist: choose one of "
                         f"{', '.join(p.stem for p in sorted((root / 'presets').glob('*.yaml')))}")
    dest = RUNS / args.preset
    dest.mkdir(parents=True, exist_ok=True)
    copy_repository(root, dest, preset.read_text())
    commands = [["dvc", "repro"]]
    if args.extractor_choice:
        commands.append([sys.executable, "-m", "pipeline.experiments.extractor_choice"])
    for command in commands:
        if subprocess.run(command, cwd=dest).returncode:
            raise SystemExit(f"error: `{' '.join(command)}` failed in {dest} (its output is above); fix the cause and "
                             "rerun: finished stages are not repeated")
    out = root / "metrics" / args.preset
    keep_metrics(dest / "metrics", out)
    print(f"metrics of the {args.preset} preset -> {out.relative_to(root)}")


def keep_metrics(run: Path, out: Path) -> None:
    """Copy the run's metrics into `out`, replacing the files of the same names; what other commands keep there
    (e.g. the claims runner's reports and grids) stays."""
    shutil.copytree(run, out, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
