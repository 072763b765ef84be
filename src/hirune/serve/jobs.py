"""Work off the request thread: a queue of jobs and the one worker thread that runs them.

Sampling a run takes seconds to minutes, far longer than an HTTP request should wait, so
the page's request only *submits* a job and gets its id back at once; the worker thread
runs the jobs one at a time (one model in memory at a time, every core for it), and the
page polls the job's state and progress (0..1, which the job's function reports through
`job.report`: from the sampler's per-step callback).  A job ends `done` with its
result (a dict of file names -> bytes, and facts) or `failed` with the error's message.

The queue is bounded: `submit` refuses a job once `max_waiting` are waiting (QueueFull),
rather than letting a page pile up work nobody will see.

    jobs = Jobs()
    job = jobs.submit(lambda job: {"files": [...]})     # work(job) -> result; job.report(p)
    jobs.get(job.id).state        # queued -> running -> done | failed
"""

from __future__ import annotations

import queue
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

STATES = ("queued", "running", "done", "failed")


class QueueFull(RuntimeError):
    """More jobs are waiting than the queue holds."""


@dataclass
class Job:
    """One unit of work: `work(job)` returns the result dict and may call `job.report(p)`,
    the progress p in [0, 1]; `job.id` names it.  `error`: the message of what it raised."""

    id: str
    work: Callable[[Job], dict]
    state: str = "queued"
    progress: float = 0.0
    error: str | None = None
    result: dict = field(default_factory=dict)

    def report(self, p: float) -> None:
        self.progress = min(1.0, max(self.progress, float(p)))  # never backwards

    def run(self) -> None:
        self.state = "running"
        try:
            self.result = self.work(self)
        except Exception as e:  # the job fails, the worker lives on
            self.error = " ".join(str(e).splitlines()) or type(e).__name__
            if not isinstance(e, (ValueError, FloatingPointError)):  # a bug: keep its traceback in the log
                traceback.print_exc()
            self.state = "failed"
            return
        self.progress, self.state = 1.0, "done"


class Jobs:
    """A bounded queue of jobs and one daemon worker thread (started on the first submit).
    The newest `keep` finished jobs stay readable; older ones are forgotten."""

    def __init__(self, max_waiting: int = 4, keep: int = 32):
        self.max_waiting, self.keep = max_waiting, keep
        self._queue: queue.Queue[Job] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, work: Callable[[Job], dict]) -> Job:
        with self._lock:
            waiting = sum(job.state == "queued" for job in self._jobs.values())
            if waiting >= self.max_waiting:
                raise QueueFull(f"{waiting} jobs are already waiting (at most {self.max_waiting}); "
                                "try again when one has finished")
            job = Job(uuid.uuid4().hex[:12], work)
            self._jobs[job.id] = job
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="hirune-serve-worker", daemon=True)
                self._worker.start()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _forget_old(self) -> None:
        finished = [i for i, job in self._jobs.items() if job.state in ("done", "failed")]
        for i in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[i]

    def _loop(self) -> None:
        while True:
            self._queue.get().run()


__all__ = ["STATES", "Job", "Jobs", "QueueFull"]
