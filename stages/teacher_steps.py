"""teacher_steps: the teacher's Heun sampler at frontier.teacher_nfe network evaluations, scored on scale's sets.

Each point is scale.num_sets disjoint sets of evaluation.set_size samples with the seeds and labels of every
generated row (sample i: noise seed + i, class i mod num_classes), drawn as the sample stage draws them: the
teacher's sample i starts from the noise of the one-step generator's sample i, and set k of every point is
scored with the same KID reference subsets as the scale stage's set k. Writes data/teacher_steps/nfe<NFE>.json
(every set's metrics, seconds per sample); the frontier stage puts them beside the one-step generator's. Stage 2
does not change them, so experiments on its params reuse them.
"""

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import load_encoder
from pipeline.evaluation.frontier import layout, point
from pipeline.evaluation.reference import load_reference
from pipeline.generation.sampling import heun_sets
from pipeline.networks.models import load_denoiser
from pipeline.noise_levels import heun_sigmas
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT = "data/teacher_steps"


def main(params: Params, runtime: Runtime) -> None:
    e, s, num_sets = params.evaluation, params.sample, params.scale.num_sets
    device = runtime.device
    reference = load_reference("data/reference", params, device)
    encoder = load_encoder("data/encoded", device)
    teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
    shape = (config["channels"], config["resolution"], config["resolution"])
    primary, sets_layout = reference.info["primary"], layout(num_sets, e.set_size, params.seed)
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        for nfe in params.frontier.teacher_nfe:
            sets, seconds = heun_sets(teacher, heun_sigmas(nfe, s.sigma_min, s.sigma_max, s.rho), num_sets,
                                      e.set_size, params.seed, shape, config["num_classes"], encoder.decode, device,
                                      runtime.autocast)
            scores = reference.score_sets(sets, params.seed)
            write_json(tmp / f"nfe{nfe}.json", point("teacher", nfe, seconds / (num_sets * e.set_size), scores,
                                                     sets_layout))
            fd = sum(score[primary]["fd"] for score in scores) / num_sets
            console.print(f"teacher at {nfe} NFE: {primary} FD {fd:.4g} over {num_sets} sets ({seconds:.1f}s)")


if __name__ == "__main__":
    run_stage(main)
