"""hirune serve's API (FastAPI's TestClient: the app in this process, its job thread real):
the runs listed, a sample job's pictures equal to `generate`'s samples bitwise, an edit,
the metrics, the job queue, and every bad value refused naming what is valid; a port in use."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch

fastapi = pytest.importorskip("fastapi", reason="hirune serve needs fastapi (pip install 'hirune[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from hirune.cli import main  # noqa: E402
from hirune.inference import edit, generate, guide, load, regenerate  # noqa: E402
from hirune.inference.editing import read_image  # noqa: E402
from hirune.metrics import psnr  # noqa: E402
from hirune.serve.app import make_app  # noqa: E402
from hirune.serve.jobs import Jobs, QueueFull  # noqa: E402
from hirune.serve.server import PortInUse, bind  # noqa: E402
from hirune.serve.work import sample_work  # noqa: E402
from hirune.training.run_folder import logged_records  # noqa: E402
from hirune.viz import grid_picture  # noqa: E402


@pytest.fixture(scope="module")
def client(runs_root, tmp_path_factory):
    return TestClient(make_app(runs_root, results=tmp_path_factory.mktemp("results")))


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def test_the_runs_are_listed_with_what_they_take(client):
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"cond", "plain"}
    assert runs["cond"]["condition"] == "class" and runs["cond"]["classes"] == 10 and runs["cond"]["guidance"]
    assert runs["plain"]["condition"] == "none" and not runs["plain"]["guidance"]
    assert runs["cond"]["can_sample"] and runs["cond"]["logged_steps"] == 4
    every = ["ddpm", "ddim", "annealed_langevin", "euler_maruyama", "pc", "euler", "midpoint", "heun", "rk45",
             "dpmpp_2m"]
    assert client.get("/api/runs/cond").json()["samplers"] == every
    # a rectified flow reaches sigma = 0 and has no reverse SDE at t = 1: Langevin and the SDE samplers refuse it
    assert client.get("/api/runs/plain").json()["samplers"] == ["ddpm", "ddim", "euler", "midpoint", "heun", "rk45",
                                                                 "dpmpp_2m"]


def test_a_sample_job_gives_generates_samples_bitwise(client, runs_root, finished):
    form = {"run": "cond", "sampler": "ddpm", "steps": 4, "n": 4, "seed": 3, "label": 7, "guidance": 2.0}
    job = client.post("/api/sample", json=form).json()["job"]
    state = finished(client, job)
    assert state["state"] == "done" and state["progress"] == 1.0 and state["labels"] == [7] * 4, state
    assert set(state["files"]) == {"samples.png", "trajectory.gif", "x0.png"}
    run = load(runs_root / "cond")
    out, _ = generate(run, 4, "ddpm", 4, seed=3, label=7, denoiser=guide(run, "cfg", 2.0), progress=False)
    expected = np.asarray(grid_picture(out.x))
    assert np.array_equal(_pixels(client.get(state["files"]["samples.png"]).content), expected)
    with Image.open(io.BytesIO(client.get(state["files"]["trajectory.gif"]).content)) as gif:
        # the noise, then x_t after each of 3 steps and the final jump to x0
        assert gif.format == "GIF" and gif.n_frames == 1 + 4 and gif.size == expected.shape[::-1]
    x0 = _pixels(client.get(state["files"]["x0.png"]).content)
    assert x0.shape == (4 * 8 + 5 * 2, 4 * 8 + 5 * 2)  # 4 samples x 4 estimates (one per evaluation), 2-pixel pads


def test_the_progress_follows_the_samplers_steps(runs_root, tmp_path):
    class Recorder:
        id, reports = "job", []

        def report(self, p):
            self.reports.append(p)

    job = Recorder()
    run = load(runs_root / "cond")
    form = {"sampler": "heun", "steps": 5, "n": 2, "seed": 0, "guidance": None, "label": None}
    sample_work(run, form, tmp_path)(job)
    assert job.reports == [k / 5 for k in range(1, 6)]  # one report per grid time, the last at 1


def test_an_uploaded_image_is_inverted_and_edited(client, runs_root, tmp_path, finished):
    digit = tmp_path / "d.png"
    Image.fromarray((np.indices((8, 8)).sum(0) * 16).astype(np.uint8)).save(digit)
    form = {"run": "cond", "source": "1", "target": "7", "steps": "4", "guidance": "2"}
    job = client.post("/api/edit", data=form, files={"image": ("d.png", digit.read_bytes(), "image/png")}).json()
    state = finished(client, job["job"])
    assert state["state"] == "done", state
    assert state["reconstruction_psnr_db"] > 40  # exact inversion: the source condition gives the image back
    run = load(runs_root / "cond")  # the same through the library: edit, and regenerate under the source
    x, _ = read_image(run.data, str(digit))
    edited, noise = edit(run, x, 1, 7, scale=2.0, steps=4)
    back = regenerate(run, noise, labels=torch.tensor([1]), denoiser=guide(run, "cfg", 2.0), steps=4).x
    assert state["reconstruction_psnr_db"] == float(psnr(back, x)[0])
    expected = np.asarray(grid_picture(torch.cat([x, back, edited]), nrow=3))
    assert np.array_equal(_pixels(client.get(state["files"]["edit.png"]).content), expected)


def test_the_metrics_are_the_runs_records(client, runs_root):
    records = client.get("/api/metrics/cond").json()["records"]
    assert records == logged_records(runs_root / "cond") and [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("loss" in r for r in records)


@pytest.mark.parametrize("form, status, message", [
    ({"run": "cond", "sampler": "fast"}, 422, "sampler='fast' is not valid for run 'cond'; valid: ['ddpm', 'ddim'"),
    ({"run": "cond", "steps": 0}, 422, "steps=0 is not valid; valid: an integer in 1..1000"),
    ({"run": "cond", "n": "many"}, 422, "n='many' is not valid; valid: an integer in 1..64"),
    ({"run": "gone"}, 404, "unknown run 'gone'; valid: ['cond', 'plain']"),
    ({"run": "plain", "guidance": 3}, 422, "run 'plain' takes no guidance (it is unconditional); valid: leave it"),
    ({"run": "cond", "label": 10}, 422, "label=10 is not valid; valid: an integer in 0..9"),
    ({"run": "plain", "label": 3}, 422, "run 'plain' is unconditional; valid: leave it empty"),
    ({"sampler": "ddim"}, 422, "run is missing; valid: ['cond', 'plain']"),
])
def test_bad_values_are_refused_naming_what_is_valid(client, form, status, message):
    response = client.post("/api/sample", json=form)
    assert response.status_code == status and message in response.json()["error"], response.json()


def test_bad_uploads_and_unknown_jobs_are_refused(client):
    files = {"image": ("notes.txt", b"not an image", "text/plain")}
    response = client.post("/api/edit", data={"run": "cond", "source": "1", "target": "7"}, files=files)
    assert response.status_code == 422
    assert response.json()["error"] == "'notes.txt' is not an image Pillow reads; valid: a PNG or JPEG image"
    response = client.post("/api/edit", data={"run": "plain", "source": "1", "target": "7"}, files=files)
    assert response.status_code == 422 and "run 'plain' is unconditional" in response.json()["error"]
    response = client.post("/api/edit", data={"run": "cond", "target": "7"}, files=files)
    assert response.status_code == 422 and response.json()["error"] == "source is missing; valid: a class in 0..9"
    assert client.get("/api/jobs/nope").status_code == 404
    assert "unknown run 'gone'" in client.get("/api/metrics/gone").json()["error"]


def test_jobs_run_off_the_request_thread_with_progress_and_a_bounded_queue():
    jobs, release, seen = Jobs(max_waiting=1), threading.Event(), {}

    def slow(job):
        seen["thread"] = threading.current_thread().name
        job.report(0.5)
        release.wait(10)
        return {"files": []}

    first = jobs.submit(slow)
    while first.progress < 0.5:
        time.sleep(0.001)
    assert first.state == "running" and seen["thread"] == "hirune-serve-worker"
    second = jobs.submit(lambda job: 1 / 0)  # waits: one job at a time
    assert second.state == "queued"
    with pytest.raises(QueueFull, match="1 jobs are already waiting"):
        jobs.submit(slow)
    release.set()
    while second.state in ("queued", "running"):
        time.sleep(0.001)
    assert first.state == "done" and first.progress == 1.0
    assert second.state == "failed" and second.error == "division by zero"


def test_a_port_in_use_is_a_clear_error(tmp_path, capsys):
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(PortInUse) as error:
            bind("127.0.0.1", port)
        assert error.value.strerror == f"port {port} is in use on 127.0.0.1; pass --port N (or --port 0 for a free one)"
        assert main(["serve", "--runs", str(tmp_path), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"hirune serve: error: port {port} is in use on 127.0.0.1; pass --port N (or --port 0 for a "
                       "free one)"]
    finally:
        taken.close()
    with pytest.raises(ValueError, match="port 70000 is not valid; valid: 0..65535"):
        bind("127.0.0.1", 70000)


def test_binding_beyond_loopback_warns_and_a_missing_folder_is_named(tmp_path, capsys):
    taken = bind("0.0.0.0", 0)  # (taken, so that the command stops at once)
    try:
        assert main(["serve", "--runs", str(tmp_path), "--host", "0.0.0.0", "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert "warning: binding 0.0.0.0, not the loopback address" in err and "is in use on 0.0.0.0" in err
    assert main(["serve", "--runs", str(tmp_path / "gone")]) == 2
    assert f"hirune serve: error: --runs {tmp_path / 'gone'}: no such folder; valid: a folder of run folders" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_hirune_serve_serves_the_runs(runs_root):
    """The command itself, in its own process: it prints its URL and answers there."""
    import json
    import subprocess
    import sys
    import urllib.request

    command = [sys.executable, "-m", "hirune", "serve", "--runs", str(runs_root), "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            line = server.stdout.readline()
            assert line.startswith("hirune serve: runs under") and "http://127.0.0.1:" in line, line
            address = line.split(" on ")[1].split()[0]
            with urllib.request.urlopen(address + "api/runs", timeout=30) as response:
                assert {r["name"] for r in json.load(response)["runs"]} == {"cond", "plain"}
            with urllib.request.urlopen(address, timeout=30) as response:
                assert "<title>hirune serve</title>" in response.read().decode()
        finally:
            server.terminate()
