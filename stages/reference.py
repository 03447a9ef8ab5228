"""reference: the feature spaces every metric is computed in, their reference features, and the real floor.

The offline nets (a classifier for class consistency, and the `reference.features` space) are trained on the
training split; clean-fid's Inception joins when its weights are on disk. The floor is evaluation.floor_sets
disjoint draws of held-out images with the label counts of the generated sets, scored like them
(pipeline/evaluation/reference.py).
"""

from pipeline.config import Params
from pipeline.datasets.prepared import load_prepared
from pipeline.evaluation.reference import build_reference, summarise_row
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT = "data/reference"


def main(params: Params, runtime: Runtime) -> None:
    data = load_prepared("data/prepared")
    info = build_reference(OUT, params, data, runtime, lambda text: console.print(f"reference: {text}"))
    floor = summarise_row(info["floor"])
    primary = info["primary"]
    accuracy = info["classifier_holdout_accuracy"]
    console.print(f"reference: spaces {', '.join(info['spaces'])}; classifier held-out accuracy "
                  f"{'-' if accuracy is None else f'{accuracy:.3f}'}; floor {info['spaces'][primary]['distance']} "
                  f"{floor[primary]['fd']:.4g} ± {floor[primary]['fd_sd'] or 0:.2g} over {info['floor_sets']} sets of "
                  f"{info['set_size']} held-out images -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
