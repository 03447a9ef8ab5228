"""encode: prepared training images -> data/encoded (identity pixels or SD-VAE posterior moments), in
shards; under torchrun each of the compute.processes processes encodes its share of the shards."""

from pipeline.config import Params
from pipeline.datasets.encoders import encode_shards, make_encoder, write_encoded
from pipeline.datasets.prepared import load_prepared
from pipeline.runtime import Runtime
from pipeline.stage import console, progress_bar, run_stage

OUT = "data/encoded"


def main(params: Params, runtime: Runtime) -> None:
    data = load_prepared("data/prepared")
    settings = {"encoder": params.encode.encoder}
    if params.encode.encoder == "sd-vae":
        settings.update(vae=params.encode.vae, whitening=params.encode.whitening)
    encoder = make_encoder(settings, runtime.device)
    shards = encode_shards(data)
    mine = sum(len(shards[k]) for k in runtime.share(len(shards)))
    with progress_bar() as bar:  # the main process's share only: one bar on the terminal
        task = bar.add_task(f"encode {encoder.name}", total=mine, status="", visible=runtime.main)
        config = write_encoded(OUT, data, encoder, params.encode.batch_size, runtime, lambda n: bar.advance(task, n))
    if runtime.main:
        console.print(f"encoded {config['num_images']} images in {len(config['shards'])} shards on {runtime.world} "
                      f"process(es) -> {OUT} ({config['channels']}x{config['resolution']}^2)")


if __name__ == "__main__":
    run_stage(main, distributed=True)
