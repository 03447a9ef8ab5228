"""A preset run's metrics replace their own earlier copies and leave what other commands wrote beside them."""

from pipeline.experiments.preset_run import keep_metrics


def test_keep_metrics_replaces_the_runs_files_and_keeps_the_others(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "grids").mkdir(parents=True)
    (run / "fid.json").write_text("new")
    (run / "grids" / "generator.png").write_text("new grid")
    (out / "grids" / "seeds").mkdir(parents=True)
    (out / "fid.json").write_text("old")
    (out / "stage2_knobs.json").write_text("a report")
    (out / "grids" / "seeds" / "diffratio_s0.png").write_text("a seed's grid")
    keep_metrics(run, out)
    assert (out / "fid.json").read_text() == "new" and (out / "grids" / "generator.png").read_text() == "new grid"
    assert (out / "stage2_knobs.json").read_text() == "a report"
    assert (out / "grids" / "seeds" / "diffratio_s0.png").read_text() == "a seed's grid"
