"""encode: prepared training images -> data/encoded (identity pixels or SD-VAE posterior moments)."""

from pipeline.config import Params
from pipeline.encoders import make_encoder, write_encoded
from pipeline.prepared_data import TRAIN, load_prepared
from pipeline.stage import console, pick_device, run_stage
from pipeline.training_loop import progress_bar

OUT = "data/encoded"


def main(params: Params) -> None:
    device = pick_device(params.device)
    data = load_prepared("data/prepared")
    images, labels = data.part(TRAIN)
    settings = {"encoder": params.encode.encoder}
    if params.encode.encoder == "sd-vae":
        settings["vae"] = params.encode.vae
    encoder = make_encoder(settings, device)
    with progress_bar() as bar:
        task = bar.add_task(f"encode {encoder.name}", total=len(images), status="")
        config = write_encoded(OUT, images, labels, data.num_classes, encoder, params.encode.batch_size, device,
                               lambda n: bar.advance(task, n))
    console.print(f"encoded {len(images)} images -> {OUT} ({config['channels']}x{config['resolution']}^2)")


if __name__ == "__main__":
    run_stage(main)
