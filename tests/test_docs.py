"""The documentation does not rot: what README.md and docs/*.md name exists in the repository.

For every markdown file: each `python -m <module>` (and `torchrun ... -m <module>`) is a module file of the
repository or an allowed external one; each stage given to `dvc repro` / `dvc exp run`, listed in a stage
table or called a stage in backticks is a stage of dvc.yaml; each key set with `-S key=value` is a key of
params.yaml (the presets share its schema); each relative link or image resolves to a file. The checks are
small pure functions over the markdown text, so the last test can feed them a broken page and see them fail.
This file imports no torch.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Modules run with `python -m` that are not this repository's: the standard library's and the installed tools'
# entry points (a fresh environment, the installer, the test runner, torchrun's module form). Nothing else the
# pages name may come from outside the repository.
EXTERNAL_MODULES = {
    "venv",  # the standard library: the quick start's fresh environment
    "pip",  # the installer
    "pytest",  # the test runner
    "torch.distributed.run",  # torchrun's module form
}

# `dvc exp run` / `dvc repro` options that take a value (the value is not a stage name).
DVC_VALUE_OPTIONS = {"-S", "--set-param", "-n", "--name", "-m", "--message", "-j", "--jobs", "-r", "--rev"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


ANALYSIS = "analysis/dvc.yaml"  # the analysis pipeline: its stages are named analysis/dvc.yaml:<stage> to DVC


def dvc_stages(root: Path = ROOT) -> set[str]:
    """What `dvc repro` takes: the default pipeline's stage names, the analysis pipeline and its stages."""
    analysis = yaml.safe_load((root / ANALYSIS).read_text())["stages"]
    return {*yaml.safe_load((root / "dvc.yaml").read_text())["stages"], ANALYSIS, *(f"{ANALYSIS}:{s}" for s in analysis)}


def stage_names(root: Path = ROOT) -> set[str]:
    """Every stage's name, as prose names them."""
    return {name.rpartition(":")[2] for name in dvc_stages(root) if name != ANALYSIS}


def params_tree(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


# --- what a page says -------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line


def code_lines(text: str) -> list[str]:
    """Every line of a fenced block and every inline code span: where the pages write commands.

    A shell line continued with a backslash is joined with the next, so a command is one string."""
    out = []
    for block in FENCE.finditer(text):
        body = block.group(0).split("\n")[1:-1]
        out.extend(re.sub(r"\\\n\s*", " ", "\n".join(body)).split("\n"))
    out.extend(" ".join(span.split()) for span in INLINE_CODE.findall(FENCE.sub("", text)))
    return out


def prose(text: str) -> str:
    """The text without its code (fenced blocks and inline spans), where links are written."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def python_modules(text: str) -> list[str]:
    """Module names after `python -m`, `python3 -m` and `torchrun ... -m`, and the stage module the launcher
    runs (`python -m pipeline.launch ... stages.<name>`)."""
    name = r"([A-Za-z_][\w.]*(?:<[\w-]+>)?)"
    found = []
    for line in code_lines(text):
        found += re.findall(r"\bpython3?\s+-m\s+" + name, line)
        found += re.findall(r"\btorchrun\b[^|;&#]*?\s-m\s+" + name, line)
        found += re.findall(r"\bpipeline\.launch\b[^|;&#]*?\s(stages\.[\w]*(?:<[\w-]+>)?)", line)
    return found


def _commands(line: str, head: str) -> list[list[str]]:
    """The arguments of each `head` command on a line (up to a shell separator or a comment)."""
    found = []
    for match in re.finditer(re.escape(head) + r"\b", line):
        rest = re.split(r"&&|\|\||[;|#`)]", line[match.end():], maxsplit=1)[0]
        try:
            found.append(shlex.split(rest))
        except ValueError:
            found.append(rest.split())
    return found


def dvc_targets(text: str) -> list[str]:
    """Stage names given to `dvc repro` and `dvc exp run`: the bare words after the options and their values, up
    to the first that is not a name (a shell variable, punctuation: prose in a code block)."""
    found = []
    for line in code_lines(text):
        for args in _commands(line, "dvc repro") + _commands(line, "dvc exp run"):
            skip = False
            for arg in args:
                if skip:
                    skip = False
                elif arg in DVC_VALUE_OPTIONS:
                    skip = True
                elif arg.startswith("-"):
                    continue
                elif re.fullmatch(r"[A-Za-z_][\w./-]*(:[\w-]+)?", arg):
                    found.append(arg)
                else:
                    break
    return found


def stage_mentions(text: str) -> list[str]:
    """Stages the prose presents as such: the first column of a table headed `stage`, "the `x` (and `y`)
    stage(s)" and "stage `x`"."""
    found = []
    in_table = False
    for line in text.split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells and cells[0] == "stage":
            in_table = True
        elif not cells:
            in_table = False
        elif in_table:
            found += re.findall(r"^`([\w-]+)`$", cells[0])
    text = FENCE.sub("", text)
    listed = r"((?:`[a-z_]+`(?:,\s*|\s+and\s+|\s+or\s+))*`[a-z_]+`)\s+stages?\b"
    for names in re.findall(listed, text):
        found += re.findall(r"`([a-z_]+)`", names)
    found += re.findall(r"\bstage\s+`([a-z_]+)`", text)
    return found


def set_params(text: str) -> list[str]:
    """Keys set with `-S key=value` / `--set-param key=value` (quoted or not); `-S <key>=<value>` and
    `-S ...` are placeholders."""
    found = []
    for line in code_lines(text):
        for value in re.findall(r"(?:^|\s)(?:-S|--set-param)\s+('[^']*'|\"[^\"]*\"|\S+)", line):
            value = value.strip("'\"")
            if "=" in value and "<" not in value:
                found.append(value.split("=", 1)[0])
    return found


def links(text: str) -> list[str]:
    """Targets of markdown links and images."""
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(text))


# --- what must exist --------------------------------------------------------------------------------------

def module_exists(name: str, root: Path) -> bool:
    """A dotted name is a module file (x/y.py) or a package (x/y/__init__.py) of the repository; a name that
    ends in a placeholder (`stages.<name>`) needs its package."""
    if name in EXTERNAL_MODULES:
        return True
    parts = name.split(".")
    if parts[-1].startswith("<"):
        return (root.joinpath(*parts[:-1]) / "__init__.py").is_file()
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def key_exists(key: str, tree: dict) -> bool:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def link_target(target: str) -> str | None:
    """The file part of a relative link, or None for a web address, a mail address or an anchor."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
        return None
    return target.split("#", 1)[0] or None


# --- the checks: what is named and missing ----------------------------------------------------------------

def broken_modules(text: str, root: Path = ROOT) -> list[str]:
    return [m for m in python_modules(text) if not module_exists(m, root)]


def broken_stages(text: str, targets: set[str], names: set[str]) -> list[str]:
    return [s for s in dvc_targets(text) if s not in targets] + [s for s in stage_mentions(text) if s not in names]


def broken_params(text: str, tree: dict) -> list[str]:
    return [k for k in set_params(text) if not key_exists(k, tree)]


def broken_links(text: str, base: Path) -> list[str]:
    return [t for t in links(text) if (p := link_target(t)) is not None and not (base / p).exists()]


# --- the tests --------------------------------------------------------------------------------------------

PAGES = [pytest.param(path, id=str(path.relative_to(ROOT))) for path in doc_files()]


@pytest.mark.parametrize("page", PAGES)
def test_modules_exist(page):
    broken = broken_modules(page.read_text())
    assert not broken, f"{page.name}: `python -m` names modules that do not exist: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_stages_exist(page):
    broken = broken_stages(page.read_text(), dvc_stages(), stage_names())
    assert not broken, f"{page.name}: stages that are not in dvc.yaml: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_params_keys_exist(page):
    broken = broken_params(page.read_text(), params_tree())
    assert not broken, f"{page.name}: `-S` sets keys that are not in params.yaml: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    broken = broken_links(page.read_text(), page.parent)
    assert not broken, f"{page.name}: links to files that do not exist: {broken}"


def test_docs_index_lists_every_page():
    index = ROOT / "docs" / "README.md"
    listed = {link_target(t) for t in links(index.read_text())}
    missing = [p.name for p in sorted(index.parent.glob("*.md")) if p != index and p.name not in listed]
    assert not missing, f"docs/README.md does not list these pages: {missing}"


def test_the_checks_catch_a_rotten_page(tmp_path):
    (tmp_path / "here.md").write_text("")
    page = """
Run `python -m pipeline.no_such_module` and `python -m stages.prepare`, then `dvc repro no_such_stage`
and `dvc repro fid`; the `nowhere` stage; `dvc exp run -S train.no_such_key=1 -S train.seed=1
-S train.auxiliary_noise.p_mean=-1.2 -S train.auxiliary_noise.nope=0 -S train.seed.deeper=1`.

```bash
torchrun --nproc-per-node 2 -m stages.missing
python -m pipeline.launch --nproc-per-node 2 stages.absent
dvc exp run --queue -S 'train.auxiliary_lr=0.1,0.2' -S 'train.nope=0,1' -n name_not_stage && dvc queue start
python -m venv .venv && python -m stages.<name>
```

| stage | reads |
|---|---|
| `train` | data |
| `ghost` | nothing |

See [a page](missing.md#part), [this one](here.md#part), ![a grid](grids/none.png), [the web](https://dvc.org)
and [a section](#quick-start).
"""
    assert sorted(broken_modules(page)) == ["pipeline.no_such_module", "stages.absent", "stages.missing"]
    assert sorted(broken_stages(page, dvc_stages(), stage_names())) == ["ghost", "no_such_stage", "nowhere"]
    assert sorted(broken_params(page, params_tree())) == ["train.auxiliary_noise.nope", "train.no_such_key", "train.nope",
                                                          "train.seed.deeper"]
    assert broken_links(page, tmp_path) == ["missing.md#part", "grids/none.png"]
