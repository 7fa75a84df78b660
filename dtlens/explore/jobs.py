"""Work an explorer does on request: each job runs once in a background thread, says how far it
got, and keeps its result in memory; a request for a job still running answers with its progress.

Results saved to disk go to the run's own `diagnostics/` (and `figures/`), under the lock of that
one file (`dtlens.locks.folder_lock`, a `.NAME.lock` beside it): a second explorer asking for the
same result waits for the first and then reads its file.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtlens.errors import DtlensError
from dtlens.locks import folder_lock

Progress = Callable[[str], None]


@dataclass
class Job:
    key: Hashable
    status: str = "running"  # running | done | failed
    progress: str = "queued"
    started: float = field(default_factory=time.monotonic)
    result: Any = None
    error: str = ""

    def state(self) -> dict:
        return {
            "status": self.status,
            "progress": self.progress,
            "seconds": round(time.monotonic() - self.started, 1),
            "error": self.error,
        }


class Jobs:
    """At most `workers` jobs at a time; the `keep` most recently asked finished ones are kept
    (a replay of 1000 steps holds ~50 MB of frames)."""

    def __init__(self, workers: int = 2, keep: int = 16):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dtlens-explore")
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, key: Hashable, work: Callable[[Progress], Any]) -> Job:
        """The job `key`, started with `work(progress)` unless it exists (a failed one is
        retried)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.status == "failed":
                job = self._jobs[key] = Job(key)
                self._pool.submit(self._run, job, work)
            self._jobs.move_to_end(key)
            finished = [k for k, j in self._jobs.items() if j.status != "running"]
            for k in finished[: max(0, len(self._jobs) - self._keep)]:
                del self._jobs[k]
            return job

    @staticmethod
    def _run(job: Job, work: Callable[[Progress], Any]) -> None:
        def progress(message: str) -> None:
            job.progress = message

        try:
            job.result = work(progress)
            job.status = "done"
        except DtlensError as e:
            job.error, job.status = str(e), "failed"
        except Exception as e:  # a bug must show in the page, not kill the server
            job.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
            job.status = "failed"

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def file_lock(path: Path, progress: Progress, poll: float = 0.5) -> Iterator[None]:
    """Hold the write lock of file `path`, waiting (with progress) while another process does."""
    while True:
        with ExitStack() as stack:
            try:
                stack.enter_context(folder_lock(path))
            except DtlensError as e:
                progress(f"waiting: {e}")
                time.sleep(poll)
                continue
            yield
            return
