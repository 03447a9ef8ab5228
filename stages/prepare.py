"""prepare: the configured data source -> data/prepared (uint8 image shards, labels, train/held-out split,
manifest)."""

from pipeline.config import Params
from pipeline.datasets.prepared import write_prepared
from pipeline.runtime import Runtime
from pipeline.stage import console, progress_bar, run_stage

OUT = "data/prepared"


def main(params: Params, runtime: Runtime) -> None:
    with progress_bar() as bar:
        task = bar.add_task(f"prepare {params.prepare.source}", total=None, status="")
        manifest = write_prepared(OUT, params.prepare, params.seed, lambda n: bar.advance(task, n))
    console.print(f"prepared {manifest['num_train']} training and {manifest['num_holdout']} held-out images "
                  f"({manifest['resolution']}px, {len(manifest['class_names'])} classes, "
                  f"{len(manifest['shards'])} shards, {len(manifest['skipped'])} skipped) -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
