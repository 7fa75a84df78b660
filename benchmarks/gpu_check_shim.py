"""Write an import-only stand-in for Hugging Face `datasets` into DIR (`gpu_check.sh`).

transformer-lens imports `datasets` (and with it pyarrow, 53 MiB: more than a device call
carries) for its own dataset helpers, which dtlens never calls. Where the GPU image lacks it,
gpu_check.sh puts this stand-in on the path: the names transformer-lens imports exist, and
loading a dataset raises at once.

    python benchmarks/gpu_check_shim.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULES = {
    "__init__.py": "from datasets.arrow_dataset import Dataset\n"
    "from datasets.iterable_dataset import IterableDataset\n"
    "from datasets.load import load_dataset\n",
    "arrow_dataset.py": "class Dataset:\n    pass\n",
    "iterable_dataset.py": "class IterableDataset:\n    pass\n",
    "load.py": "def load_dataset(*args, **kwargs):\n"
    "    raise ImportError('datasets is not installed (gpu_check.sh stand-in)')\n",
}
HEADER = '"""Import-only stand-in for `datasets` (benchmarks/gpu_check_shim.py)."""\n'


def write_shim(root: Path) -> Path:
    package = root / "datasets"
    package.mkdir(parents=True, exist_ok=True)
    for name, body in MODULES.items():
        (package / name).write_text(HEADER + body)
    return package


if __name__ == "__main__":
    print(f"import-only stand-in for datasets: {write_shim(Path(sys.argv[1]))}")
