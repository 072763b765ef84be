"""The web app of `hirune serve` (FastAPI): one page and the JSON API it calls.

    GET  /                          the page (static/index.html: plain HTML and JS, nothing fetched)
    GET  /api/runs                  every run under the root: family, condition, can_sample (or why_not)
    GET  /api/runs/{run}            a run that samples, loaded: the same and its samplers
    POST /api/sample                {run, label | prompt, sampler, steps, guidance, seed, n} -> {job}
    POST /api/edit                  form: run, image (a file), source, target, steps, guidance -> {job}
    GET  /api/jobs/{job}            {state, progress, error, files: their URLs, ...}
    GET  /api/jobs/{job}/{file}     samples.png, trajectory.gif, x0.png; edit.png
    GET  /api/metrics/{run}         the run's metrics.jsonl records (its loss curve)

Work runs on the job queue's thread (`jobs.Jobs`), never on a request's.  Refusals are
JSON {"error": "..."} naming what is valid: 422 for a bad value, 404 for an unknown run or
job, 503 when the queue is full.

(No `from __future__ import annotations` here: FastAPI reads the routes' annotations, and
Request, UploadFile... are imported inside `make_app`, fastapi being an optional extra.)
"""

import tempfile
from importlib import resources
from pathlib import Path

from ..inference.editing import read_image
from ..training.run_folder import logged_records
from .forms import edit_form, sample_form
from .jobs import Jobs, QueueFull
from .runs import Runs, Unknown
from .work import edit_work, sample_work


def page() -> str:
    """The page's HTML (package data: hirune/serve/static/index.html)."""
    return resources.files("hirune.serve").joinpath("static/index.html").read_text()


def make_app(runs_root: str | Path, jobs: Jobs | None = None, results: str | Path | None = None):
    """The FastAPI app over the runs under `runs_root`; `jobs`: the queue (default: a new
    one); `results`: where the jobs' pictures go (default: a new temporary folder)."""
    try:
        from fastapi import FastAPI, File, Form, Request, UploadFile
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    except ImportError as e:
        raise ImportError(f"hirune serve needs FastAPI, uvicorn and python-multipart ({e}); install them with "
                          "pip install 'hirune[serve]'") from None

    runs, jobs = Runs(runs_root), jobs or Jobs()
    results = Path(results) if results is not None else Path(tempfile.mkdtemp(prefix="hirune-serve-"))
    results.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="hirune serve")

    @app.exception_handler(ValueError)
    async def refused(request: Request, e: ValueError):
        return JSONResponse({"error": " ".join(str(e).splitlines())}, status_code=422)

    @app.exception_handler(Unknown)
    async def unknown(request: Request, e: Unknown):
        return JSONResponse({"error": str(e.args[0])}, status_code=404)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, e: QueueFull):
        return JSONResponse({"error": str(e)}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page()

    @app.get("/api/runs")
    def listing():
        return {"root": str(runs.root), "runs": runs.listing()}

    @app.get("/api/runs/{name}")
    def details(name: str):
        info = runs.sampling(name)
        return {**info, "samplers": runs.loaded(name)[1]}

    @app.post("/api/sample")
    async def sample(request: Request):
        try:
            values = await request.json()
        except ValueError:
            raise ValueError("the body must be a JSON object: {run, sampler, steps, n, seed, guidance, "
                             "label | prompt}") from None
        if not isinstance(values, dict) or not values.get("run"):
            raise ValueError(f"run is missing; valid: {[r['name'] for r in runs.listing() if r['can_sample']]}")
        info = runs.sampling(str(values["run"]))
        run, samplers = await run_in_threadpool(runs.loaded, info["name"])  # a first load takes seconds
        form = sample_form(values, info, samplers)
        return _submitted(jobs.submit(sample_work(run, form, results)), form)

    @app.post("/api/edit")
    async def edit(run: str = Form(...), image: UploadFile = File(...), source: str = Form(""),
                   target: str = Form(""), steps: str = Form("50"), guidance: str = Form("")):
        info = runs.sampling(run)
        form = edit_form({"source": source, "target": target, "steps": steps, "guidance": guidance}, info)
        loaded = (await run_in_threadpool(runs.loaded, run))[0]
        x = _uploaded(loaded, await image.read(), image.filename or "upload", results)
        return _submitted(jobs.submit(edit_work(loaded, x, form, results)), form)

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str):
        job = _job(jobs, job_id)
        files = {name: f"/api/jobs/{job.id}/{name}" for name in job.result.get("files", [])}
        facts = {k: v for k, v in job.result.items() if k != "files"}
        return {"id": job.id, "state": job.state, "progress": job.progress, "error": job.error,
                "files": files, **facts}

    @app.get("/api/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str):
        job = _job(jobs, job_id)
        if name not in job.result.get("files", []):
            raise Unknown(f"job {job_id} has no file {name!r}; valid: {job.result.get('files', [])}")
        return FileResponse(results / job.id / name)

    @app.get("/api/metrics/{name}")
    def metrics(name: str):
        return {"run": name, "records": logged_records(runs.folder(name))}

    return app


def _submitted(job, form: dict) -> dict:
    return {"job": job.id, "state": job.state, "form": form}


def _job(jobs: Jobs, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise Unknown(f"unknown job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return job


def _uploaded(run, data: bytes, filename: str, results: Path):
    """An uploaded image as (1, C, H, W) in [-1, 1] at the run's size; ValueError where it is
    not an image."""
    if not data:
        raise ValueError("the upload is empty; valid: a PNG or JPEG image")
    folder = Path(tempfile.mkdtemp(dir=results, prefix="upload-"))
    path = folder / Path(filename).name
    path.write_bytes(data)
    try:
        x, _ = read_image(run.data, str(path))
    except ValueError:
        raise ValueError(f"{Path(filename).name!r} is not an image Pillow reads; valid: a PNG or JPEG image") from None
    return x


__all__ = ["make_app", "page"]
