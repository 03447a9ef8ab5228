"""summary: the run's headline figures -> metrics/summary.json, the pipeline's one DVC metrics file (what
`dvc exp show` and `dvc metrics diff` list). The detailed reports it is read from stay committed beside it."""

from pipeline.artifacts import read_json, require, write_json
from pipeline.config import Params
from pipeline.evaluation.headline import headline
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

METRICS = "metrics/summary.json"


def main(params: Params, runtime: Runtime) -> None:
    fid, scale, train = (read_json(require(f"metrics/{name}.json", name)) for name in ("fid", "scale", "train"))
    figures = headline(fid, scale, train)
    write_json(METRICS, figures)
    g = figures["generator"]
    console.print(f"one-step generator: {', '.join(f'{k} {v:.4g}' for k, v in g.items())} -> {METRICS}")


if __name__ == "__main__":
    run_stage(main)
