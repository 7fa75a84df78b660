"""Published HF `DecisionTransformerModel` directories as a dtlens run, one epoch per directory.

`import_hf([d0, d1, ...], out, dataset=...)` writes the run folder `train` would (config.json,
probe.safetensors, checkpoints/epoch-NNNN.safetensors with epoch i = directory i), so every
run diagnostic (CKA, MI, weight change, gradients, attention) applies to released models. The
dataset gives the probe windows and the state normalisation (published DTs normalise states with
their D4RL dataset's mean and std); the run has no training metrics and cannot be resumed.
Weights in `pytorch_model.bin` are read by transformers with `torch.load(weights_only=True)`,
which runs no code; each checkpoint is written as safetensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dtlens.data import load_dataset
from dtlens.errors import DtlensError
from dtlens.io import save_json
from dtlens.locks import folder_lock
from dtlens.model.backbones import quiet_hf
from dtlens.model.checkpoint import save_model
from dtlens.model.config import config_mismatches
from dtlens.model.dt import DecisionTransformer
from dtlens.train.config import TrainConfig
from dtlens.train.loop import run_config, save_probe
from dtlens.train.run import Run


def load_hf_dt(path: str | os.PathLike) -> DecisionTransformer:
    """The dtlens DecisionTransformer of a local HF DecisionTransformerModel directory."""
    from transformers import AutoConfig, DecisionTransformerModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DtlensError(f"{path}: not an HF model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != "decision_transformer":
        raise DtlensError(
            f"{path}: an HF {config.model_type!r} model, expected a DecisionTransformerModel"
        )
    with quiet_hf():
        hf = DecisionTransformerModel.from_pretrained(path, local_files_only=True)
    return DecisionTransformer.from_hf(hf.float().eval())


def import_hf(
    dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    dataset: str,
    env_id: str | None = None,
    context_len: int = 20,
    rtg_scale: float = 1000.0,
    probe_size: int = 100,
    probe_seed: int = 0,
    seed: int = 0,
) -> Run:
    """Write the run `out` whose epoch i is the HF DT in `dirs[i]`; all must share one config.

    `seed` seeds what the diagnostics draw (dropout masks); `context_len` and `rtg_scale` shape
    the probe windows as the published models were trained (K=20, returns / 1000)."""
    if not dirs:
        raise DtlensError("import-hf needs at least one HF DecisionTransformerModel directory")
    out = Path(out)
    models = [load_hf_dt(d) for d in dirs]
    first = models[0].cfg
    for d, m in zip(dirs[1:], models[1:], strict=True):
        if diff := config_mismatches(first, m.cfg):
            raise DtlensError(f"{d}: another architecture than {dirs[0]} ({'; '.join(diff)})")
    data = load_dataset(dataset, env_id=env_id)
    if (data.obs_dim, data.act_dim) != (first.state_dim, first.act_dim):
        raise DtlensError(
            f"{dataset}: states/actions of {data.obs_dim}/{data.act_dim} dims, the model "
            f"takes {first.state_dim}/{first.act_dim}"
        )
    cfg = TrainConfig(
        init="hf-dt",
        dataset=dataset,
        env_id=env_id,
        context_len=context_len,
        epochs=max(1, len(dirs) - 1),
        seed=seed,
        rtg_scale=rtg_scale,
        eval_episodes=0,
        size=first.backbone,
        dt=first.options,
        probe_size=probe_size,
        probe_seed=probe_seed,
    )
    config = run_config(cfg, first, data) | {"imported": [str(Path(d).resolve()) for d in dirs]}
    with folder_lock(out):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DtlensError(f"{out}: exists and is not empty; choose another --out")
        work = out.parent / f".{out.name}.partial-{os.getpid()}"
        try:
            save_probe(cfg, data, work / "probe.safetensors")
            for epoch, (d, model) in enumerate(zip(dirs, models, strict=True)):
                path = work / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
                save_model(model, path, epoch=epoch, source=str(d))
            save_json(config, work / "config.json")
            if out.exists():
                out.rmdir()
            os.rename(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Run(out)
