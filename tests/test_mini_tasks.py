"""The `mini-tasks` preset: `mini` on Hopper, HalfCheetah and Walker2d."""

from __future__ import annotations

from dtlens.data import load_dataset
from dtlens.experiments import presets
from dtlens.experiments.reproduce import plan


def test_mini_tasks_is_mini_on_three_tasks():
    mini, tasks = presets.get("mini", device="cpu"), presets.get("mini-tasks", device="cpu")
    assert tasks.name == "mini-tasks" and "mini-tasks" in presets.PRESETS
    assert tasks.datasets == {
        "hopper": "mini/hopper-medium",
        "halfcheetah": "mini/halfcheetah-medium",
        "walker2d": "mini/walker2d-medium",
    }
    assert (tasks.train, tasks.seeds, tasks.inits) == (mini.train, mini.seeds, mini.inits)
    assert tasks.block_swap_epochs == dict.fromkeys(tasks.datasets, mini.train.epochs)
    assert mini.datasets == {"hopper": "mini/hopper-medium"}  # make demo stays Hopper only
    plans = plan(tasks)
    assert [p.label for p in plans] == list(tasks.datasets)
    hopper = plan(mini)[0]
    assert all(len(p.specs()) == len(hopper.specs()) for p in plans)
    for label, dataset in tasks.datasets.items():  # each task's env accepts its dataset
        ds = load_dataset(dataset, env_id=presets.PAPER_ENVS[label])
        assert ds.env_id == presets.PAPER_ENVS[label]
