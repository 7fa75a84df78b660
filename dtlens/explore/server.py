"""The explorer's web server: a page, its script, plotly.js (from the `plotly` package, so nothing
comes from the network) and a JSON API over one folder's runs.

```
GET /                       the page (views chosen by its URL fragment)
GET /app.js /app.css /plotly.min.js
GET /api/runs               the served folder and its runs
GET /api/table1  /api/curves
GET /api/attention?run=ID&epoch=E&window=W
GET /api/{attribution,lens,patching,cka,gradients}?run=ID&epoch=E
GET /api/ablation?run=ID    GET /api/replay?run=ID&epoch=E&steps=N   GET /api/frame?...&t=T
```
A result still being computed answers 202 with its progress (the page polls); a request naming
anything outside the served folder answers 403, an unknown run or route 404, bad input 400.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dtlens.errors import DtlensError
from dtlens.explore import replay, results
from dtlens.explore.catalog import Catalog, Refused, check_id
from dtlens.explore.jobs import Job, Jobs, Progress
from dtlens.report.report import EXPLORER_PORT
from dtlens.train.run import Run

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = EXPLORER_PORT
MAX_REPLAY_STEPS = 1000
#: The browser loads nothing from anywhere but this server (plotly styles inline, draws data:).
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-eval'; connect-src 'self'"
)


def plotly_js() -> Path:
    """plotly.min.js as the `plotly` package ships it (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise DtlensError("the explorer needs the plotly package: pip install plotly")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise DtlensError(f"{path}: missing from the plotly package; reinstall plotly")
    return path


#: Every file the server sends besides the API: URL path -> (file, content type).
def static_files() -> dict[str, tuple[Path, str]]:
    return {
        "/": (STATIC / "index.html", "text/html; charset=utf-8"),
        "/app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
        "/app.css": (STATIC / "app.css", "text/css; charset=utf-8"),
        "/plotly.min.js": (plotly_js(), "text/javascript; charset=utf-8"),
    }


class BadRequest(DtlensError):
    """A parameter the API cannot use."""


class Explorer:
    """The state one server shares between its request threads."""

    def __init__(self, root: str | Path, workers: int = 2):
        """`workers` computations at a time (the others queue)."""
        self.catalog = Catalog(root)
        self.jobs = Jobs(workers)
        self.static = static_files()

    # parameters -------------------------------------------------------------------------------

    @staticmethod
    def param(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
        values = query.get(name)
        if not values:
            if default is None:
                raise BadRequest(f"missing parameter {name!r}")
            return default
        return values[0]

    def int_param(self, query: dict, name: str, default: int | None = None) -> int:
        text = self.param(query, name, None if default is None else str(default))
        try:
            return int(text)
        except ValueError:
            raise BadRequest(f"{name} must be an integer, got {text!r}") from None

    def run(self, query: dict) -> tuple[str, Run]:
        run_id = self.param(query, "run")
        return run_id, self.catalog.run(run_id)

    def run_epoch(self, query: dict) -> tuple[str, Run, int]:
        run_id, run = self.run(query)
        (epoch,) = run.resolve_epochs([self.int_param(query, "epoch", -1)])
        return run_id, run, epoch

    # views --------------------------------------------------------------------------------------

    def runs(self, query: dict) -> dict:
        self.catalog.refresh()
        c = self.catalog
        return {
            "root": str(c.root),
            "reproduction": c.reproduction() is not None,
            "runs": [e.summary(Run(c.root / e.id)) for e in c.entries.values()],
        }

    def attention(self, query: dict) -> Job:
        run_id, run, epoch = self.run_epoch(query)
        window = self.int_param(query, "window", 0)

        def work(progress: Progress) -> dict:
            progress(f"computing the attention of {run.name}, epoch {epoch}")
            return results.attention(run, epoch)

        job = self.jobs.get(("attention", run_id, epoch), work)
        return _then(job, lambda data: results.attention_window(data, window))

    def run_view(self, view: str, query: dict) -> Job:
        run_id, run, epoch = self.run_epoch(query)
        job = self.jobs.get(
            (view, run_id, epoch), lambda p: results.run_result(view, run, epoch, p)
        )

        def shape(ds: Any) -> dict:
            training = view == "gradients"  # the training steps' norms beside the epoch's
            extra = {"training": results.training_gradients(run)} if training else {}
            return results.describe(view, ds) | extra | {"epoch": epoch}

        return _then(job, shape)

    def ablation(self, query: dict) -> dict:
        return results.ablation(self.run(query)[1])

    def replay_job(self, query: dict) -> Job:
        run_id, run, epoch = self.run_epoch(query)
        steps = self.int_param(query, "steps", 200)
        if not 1 <= steps <= MAX_REPLAY_STEPS:
            raise BadRequest(f"steps must lie in 1..{MAX_REPLAY_STEPS}, got {steps}")
        key = ("replay", run_id, epoch, steps)
        return self.jobs.get(key, lambda p: replay.replay(run, epoch, steps, p))

    def replay(self, query: dict) -> Job:
        return _then(self.replay_job(query), lambda r: r.summary())

    def frame(self, query: dict) -> bytes:
        job = self.replay_job(query)
        if job.status != "done":
            raise BadRequest("the replay is not computed yet: ask /api/replay first")
        t = self.int_param(query, "t")
        frames = job.result.frames
        if not 0 <= t < len(frames):
            raise BadRequest(f"t must lie in 0..{len(frames) - 1}, got {t}")
        return frames[t]

    def routes(self) -> dict[str, Callable[[dict], Any]]:
        views = {f"/api/{v}": (lambda q, v=v: self.run_view(v, q)) for v in results.RUN_VIEWS}
        return {
            "/api/runs": self.runs,
            "/api/table1": lambda q: results.table1(self.catalog),
            "/api/curves": lambda q: results.curves(self.catalog),
            "/api/attention": self.attention,
            "/api/ablation": self.ablation,
            "/api/replay": self.replay,
            **views,
        }


def _then(job: Job, shape: Callable[[Any], Any]) -> Job:
    """`job` as the API shows it: its result shaped by `shape` once done."""
    if job.status != "done":
        return job
    view = Job(job.key, "done", job.progress, job.started)
    view.result = shape(job.result)
    return view


def make_handler(explorer: Explorer) -> type[BaseHTTPRequestHandler]:
    routes = explorer.routes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "dtlens-explore"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI says the URL
            pass

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the browser left (a new view)
                pass

        def send_json(self, status: int, data: Any) -> None:
            body = json.dumps(results.jsonable(data), separators=(",", ":"), allow_nan=False)
            self.send(status, body.encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            path = unquote(url.path)
            try:
                check_id(path.lstrip("/"))
                query = parse_qs(url.query, keep_blank_values=True)
                for values in query.values():
                    for value in values:
                        check_id(value)
                if path in explorer.static:
                    file, content_type = explorer.static[path]
                    self.send(HTTPStatus.OK, file.read_bytes(), content_type)
                elif path == "/api/frame":
                    self.send(HTTPStatus.OK, explorer.frame(query), "image/png")
                elif path in routes:
                    answer = routes[path](query)
                    if not isinstance(answer, Job):
                        self.send_json(HTTPStatus.OK, answer)
                    elif answer.status == "done":
                        self.send_json(HTTPStatus.OK, answer.result)
                    elif answer.status == "running":
                        self.send_json(HTTPStatus.ACCEPTED, answer.state())
                    else:
                        self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, answer.state())
                else:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page {path}"})
            except Refused as e:
                self.send_json(HTTPStatus.FORBIDDEN, {"error": str(e)})
            except KeyError as e:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": str(e.args[0])})
            except DtlensError as e:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})

    return Handler


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT):
    """A ThreadingHTTPServer over `root` on `host:port` (port 0: a free one); not started."""
    explorer = Explorer(root)
    server = ThreadingHTTPServer((host, port), make_handler(explorer))
    server.daemon_threads = True
    server.explorer = explorer  # type: ignore[attr-defined]
    return server
