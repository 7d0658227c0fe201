"""reproduce.py pins the floating-point code paths of the commands it runs, and runs record what decided their
numerics (CPU, torch's CPU capability, BLAS, the pinned variables) in their provenance."""
import json
import os

import torch

import main
import reproduce
from test_main import TINY
from utils import PINNED_NUMERICS, numerics_provenance


def test_provenance_names_what_decides_the_numerics():
    record = numerics_provenance()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu"] and record["blas"].split()[0] in torch.__config__.show()
    assert record["pinned"] == {k: os.environ[k] for k in PINNED_NUMERICS if k in os.environ}


def test_reproduce_gives_its_commands_the_pinned_environment_unless_told_not_to(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(reproduce, "command", lambda argv, env=None: seen.append(env) or 0)
    assert reproduce.run("sample", [], str(tmp_path)) == 0
    assert len(seen) == 2 and all(env is not None and PINNED_NUMERICS.items() <= env.items() for env in seen)
    seen.clear()
    assert reproduce.run("sample", [], str(tmp_path), pin=False) == 0
    assert seen == [None, None]  # the caller's own environment


def test_results_record_the_pinned_setting_and_threads(tiny_split, tmp_path, monkeypatch):
    data_dir, _ = tiny_split
    for name, value in PINNED_NUMERICS.items():
        monkeypatch.setenv(name, value)
    save_dir = str(tmp_path / "run")
    main.main(["--data_dir", data_dir, *TINY, "--epochs", "1", "--save_dir", save_dir])
    with open(os.path.join(save_dir, "results.json")) as f:
        provenance = json.load(f)["provenance"]
    assert provenance["pinned"] == PINNED_NUMERICS and provenance["threads"] == 1
    assert torch.load(os.path.join(save_dir, "best.pt"), weights_only=True)["provenance"] == provenance
