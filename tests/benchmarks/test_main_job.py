"""benchmarks/main_job.py at tiny size: each candidate's commands run in a fresh folder, timed, then
scored by `hirune eval` at every seed."""

from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark

main_job = load_benchmark("main_job")


@pytest.mark.slow  # five subprocesses (~15 s quiet); the stages themselves: tests/training/test_stages.py
def test_the_latent_candidate_trains_its_autoencoder_then_is_scored_per_seed(tmp_path, capsys):
    results = main_job.main(["--tiny", "--only", "latent", "--samples", "8", "--seeds", "0", "1",
                             "--out", str(tmp_path)])
    r = results["latent"]
    work = tmp_path / "latent"
    assert (work / "runs/kl-ae-digits/checkpoints").is_dir()
    assert (work / "runs/vpred-digits/references/first_stage.safetensors").is_file()
    assert r["seeds"] == [0, 1] and len(r["frechet"]) == 2 and r["frechet"][0] != r["frechet"][1]
    assert r["frechet_mean"] == pytest.approx(sum(r["frechet"]) / 2) and r["job_s"] > 0
    assert r["job_frechet_500"] == json.loads((work / "runs/vpred-digits/eval.json").read_text())["frechet_distance"]
    assert json.loads((tmp_path / "results.json").read_text())["latent"]["frechet"] == r["frechet"]
    assert "| latent |" in capsys.readouterr().out


def test_an_unknown_candidate_is_refused_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_job.main(["--only", "pixl", "--out", str(tmp_path)])
    assert "unknown candidates ['pixl']; valid: ['latent', 'pixel']" in capsys.readouterr().err
