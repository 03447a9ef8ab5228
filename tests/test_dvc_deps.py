"""dvc.yaml's deps follow the code: every module a stage imports (its import closure within pipeline/ and stages/)
is covered by one of its deps, so that a change to it makes `dvc repro` rerun the stage."""

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ["dvc.yaml", "analysis/dvc.yaml"]
# Shared plumbing every stage imports, left out of the deps on purpose: none of it defines a result.
PLUMBING = {
    "pipeline/__init__.py": "an empty package marker",
    "pipeline/config.py": "the params schema: DVC tracks the params themselves",
    "pipeline/errors.py": "the error type of bad input",
    "pipeline/stage.py": "entry glue: validate the params, start the runtime, print errors",
    "pipeline/runtime.py": "device, processes and threads: results do not depend on them beyond float rounding",
    "pipeline/artifacts.py": "atomic writes and the safetensors + JSON file format",
}
ENTRY = re.compile(r"(?:-m\s+|pipeline\.launch\s+(?:--nproc-per-node\s+\S+\s+)?)(stages\.\w+)")


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project's files `path` imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]  # modules or members
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("pipeline", "stages") and (file := module_file(name)):
                found.add(file)
                parts = name.split(".")
                found.update(f for i in range(1, len(parts)) if (f := module_file(".".join(parts[:i]))))
    return found


def is_plumbing(path: Path) -> bool:
    """Listed in PLUMBING, or a package's __init__.py with nothing but a docstring."""
    if str(path.relative_to(ROOT)) in PLUMBING:
        return True
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def closure(entry: Path) -> set[Path]:
    """The project's files `entry` needs: what it imports, what those import, and so on; the plumbing's own
    imports are the plumbing's business and are not followed."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            if not is_plumbing(path):
                todo.extend(imported_files(path) - seen)
    return seen


def uncovered(pipeline: dict, wdir: Path = ROOT) -> dict[str, list[str]]:
    """{stage: [modules of its import closure that none of its deps covers]} for every stage with a Python entry."""
    missing = {}
    for name, stage in pipeline["stages"].items():
        match = ENTRY.search(stage["cmd"])
        if not match:
            continue
        base = (wdir / stage.get("wdir", ".")).resolve()
        deps = [(base / d).resolve() for d in stage.get("deps", [])]
        gaps = []
        for file in sorted(closure(module_file(match.group(1)))):
            if is_plumbing(file) or any(file == d or d in file.parents for d in deps):
                continue
            gaps.append(str(file.relative_to(ROOT)))
        if gaps:
            missing[name] = gaps
    return missing


@pytest.mark.parametrize("path", PIPELINES)
def test_every_stage_depends_on_the_code_it_runs(path):
    missing = uncovered(yaml.safe_load((ROOT / path).read_text()), (ROOT / path).parent)
    assert not missing, "modules a stage imports but does not list in its deps: " + "; ".join(
        f"{stage}: {', '.join(files)}" for stage, files in missing.items())


def test_a_module_left_out_of_a_stages_deps_is_named(tmp_path):
    """On a copy of dvc.yaml without the encoders module in pretrain's deps, the check names both."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    pipeline = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    deps = pipeline["stages"]["pretrain"]["deps"]
    assert "pipeline/datasets/encoders.py" in deps
    deps.remove("pipeline/datasets/encoders.py")
    assert uncovered(pipeline)["pretrain"] == ["pipeline/datasets/encoders.py"]


def test_plumbing_is_what_every_stage_imports():
    """The exceptions stay few: each is imported by the stages, none is a module of results."""
    imported = set().union(*(closure(f) for f in (ROOT / "stages").glob("*.py")))
    assert {str(f.relative_to(ROOT)) for f in imported} >= set(PLUMBING)


def write_deps(path: str) -> None:
    """Rewrite the code deps of every stage of `path` from its import closure (the entry first, then the modules in
    order, pipeline/networks/published as one folder), keeping its data deps; comments stay (ruamel round trip)."""
    from ruamel.yaml import YAML

    yml = YAML()
    yml.width, yml.preserve_quotes = 120, True
    yml.indent(mapping=2, sequence=4, offset=2)
    pipeline = yml.load((ROOT / path).read_text())
    for stage in pipeline["stages"].values():
        match = ENTRY.search(stage["cmd"])
        if not match:
            continue
        entry = module_file(match.group(1))
        code = sorted(str(f.relative_to(ROOT)) for f in closure(entry) - {entry} if not is_plumbing(f))
        published = "pipeline/networks/published"
        code = [f for f in code if not f.startswith(published + "/")] + ([published] if any(
            f.startswith(published + "/") for f in code) else [])
        data = [d for d in stage["deps"] if not str(d).startswith(("pipeline/", "stages/"))]
        stage["deps"] = [str(entry.relative_to(ROOT)), *code, *data]
    with open(ROOT / path, "w") as f:
        yml.dump(pipeline, f)


if __name__ == "__main__":  # python -m tests.test_dvc_deps: rewrite the code deps of both pipelines
    for name in PIPELINES:
        write_deps(name)
