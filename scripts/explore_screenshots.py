"""Screenshots of the explorer's main views (headless Chromium), as committed in docs/explore/.

    python scripts/explore_screenshots.py ROOT RUN_ID OUT [--epoch E] [--window W] [--steps N]

serves ROOT on a free loopback port, computes each view of run RUN_ID (an id as `/api/runs`
lists it, e.g. runs/text-K20-e4-s1) first, then saves OUT/{view}.png (`--t`: the replay step).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from dtlens.explore.browser import screenshot
from dtlens.explore.server import make_server

VIEWS = ("overview", "attention", "attribution", "lens", "patching", "cka", "gradients", "replay")


def wait_for(url: str) -> None:
    """GET `url` until it stops answering 202 (computing); fail on an error."""
    while True:
        try:
            with urllib.request.urlopen(url) as r:
                body = r.read()
                if r.status == 200:
                    return
                print(" ", json.loads(body)["progress"], flush=True)
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{url}: {e.code} {e.read().decode()}") from None
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--epoch", type=int, default=-1)
    parser.add_argument("--window", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--t", type=int, default=0, help="The replay's step shown.")
    parser.add_argument("--views", default=",".join(VIEWS))
    args = parser.parse_args()
    server = make_server(args.root, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    query = f"run={args.run}&epoch={args.epoch}&window={args.window}&steps={args.steps}&t={args.t}"
    for view in args.views.split(","):
        print(view, flush=True)
        api = "table1" if view == "overview" else view
        wait_for(f"{base}/api/{api}?{query}")
        size = (1400, 1000) if view in ("overview", "attention") else (1400, 700)
        screenshot(f"{base}/#view={view}&{query}", args.out / f"{view}.png", size)
    server.shutdown()


if __name__ == "__main__":
    main()
