"""teacher: the published EDM/EDM2 snapshot named by teacher.checkpoint -> data/teacher/score (the project's
safetensors + JSON), read without importing or running anything the pickle carries.

With teacher.source: pretrain there is nothing to convert: the stage records only that, and the pretrain stage
trains the teacher. DVC tracks the teachers/ folder as this stage's dependency.
"""

from pathlib import Path

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import TEACHERS_DIR, Params
from pipeline.networks.models import save_denoiser
from pipeline.networks.published.convert import convert_checkpoint, describe, finite_check
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT = "data/teacher"


def main(params: Params, runtime: Runtime) -> None:
    t = params.teacher
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        if t.source == "pretrain":
            write_json(tmp / "teacher.json", {"source": "pretrain"})
            console.print("teacher: source pretrain (trained by the pretrain stage); nothing to convert")
            return
        net, config = convert_checkpoint(Path(TEACHERS_DIR) / t.checkpoint)
        finite_check(net, config)
        save_denoiser(tmp / "score", net, config)
        info = describe(net, config)
        write_json(tmp / "teacher.json", info)
    console.print(f"teacher: {info['class']} ({info['family']}) from {t.checkpoint}, {info['parameters']:,} "
                  f"parameters -> {OUT}/score")


if __name__ == "__main__":
    run_stage(main)
