"""The library's floors: the modules that training builds on (data, networks, noise levels, randomness, the
plumbing) never import from pipeline.training, so nothing below it depends on it."""

import ast

from tests.helpers import ROOT

# pipeline/config.py is not among them: the params schema checks `divergence` against training's registry of
# divergences, the one arrow from the plumbing up to training.
BELOW_TRAINING = ["pipeline/datasets", "pipeline/networks", "pipeline/noise_levels.py", "pipeline/randomness.py",
                  "pipeline/errors.py", "pipeline/artifacts.py", "pipeline/runtime.py", "pipeline/stage.py"]


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_below_training_imports_it():
    files = [p for entry in BELOW_TRAINING for p in
             (sorted((ROOT / entry).rglob("*.py")) if (ROOT / entry).is_dir() else [ROOT / entry])]
    assert len(files) > 10
    upward = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("pipeline.training"))
              for p in files}
    assert not {k: v for k, v in upward.items() if v}, "modules below training/ import from it"
