import os
import re
import sys

import pytest
import torch

import baselines
import dataloader
import evaluate as evaluate_cli
import grid
import main
import reproduce
from conftest import TINY, results, run_script
from scoring import evaluate
from model import NCF, load_pretrained
from utils import run_cli

TINY_RUN = ["--data_dir", None, *TINY, "--threads", "1", "--epochs", "1", "--pretrain_epochs", "1"]


def test_list_names_every_experiment_with_its_figures_and_where_they_are():
    listed = run_script("reproduce.py", "--list")
    assert listed.returncode == 0
    names = re.findall(r"^(\S+)$", listed.stdout, re.M)
    assert names == list(reproduce.EXPERIMENTS)
    for name, experiment in reproduce.EXPERIMENTS.items():
        assert f"python3 {experiment.command}" in listed.stdout
        if experiment.paper:
            assert f"paper {experiment.paper}" in listed.stdout
        if experiment.readme:
            assert f"ours {experiment.readme}" in listed.stdout
    reported = [line for line in listed.stdout.split("\ntable2-neumf-16\n")[1].splitlines()[:4]
                if line.strip().startswith("reported in ")]
    assert len(reported) == 1 and "RESULTS.md: The NCF paper's Table 2, reproduced" in reported[0]


def in_process(argv, monkeypatch):
    """reproduce.command, run in this process (no interpreter start-up and torch import a command): the status.
    A torchrun command runs its script as one process here (test_distributed.py runs torchrun itself)."""
    if argv[1] == "-m":
        argv = [argv[0], *argv[argv.index("main.py"):]]
    script, flags = argv[1], argv[2:]
    monkeypatch.setattr(sys, "argv", [script, *flags])
    entry = {"main.py": lambda: main.main(flags), "grid.py": grid.run_grid, "evaluate.py": evaluate_cli.main,
             "baselines.py": lambda: baselines.main(flags)}[script]
    try:
        run_cli(entry)
    except SystemExit as e:
        return e.code
    return 0


@pytest.mark.parametrize("name", [name for name in reproduce.EXPERIMENTS if name not in reproduce.ARENA_EXPERIMENTS])
def test_each_experiment_runs_its_command(name, shared_split, tmp_path, monkeypatch):
    """On the tiny split, one epoch with one thread (the grid: one epoch a cell), with full ranking afterwards
    where it has it. (The Arena experiments need an Arena split: tests/test_continuation.py runs their code.)"""
    data_dir, _ = shared_split
    monkeypatch.setattr(reproduce, "command", lambda argv, env=None: in_process(argv, monkeypatch))
    experiment = reproduce.EXPERIMENTS[name]
    flags = [data_dir if f is None else f for f in TINY_RUN]
    if "--pretrain" not in experiment.command:
        flags = flags[:-2]
    if experiment.argv()[0] == "-m":  # torchrun's own flags are not main.py's
        assert experiment.argv()[:2] == ["-m", "torch.distributed.run"] and "main.py" in experiment.argv()
    if experiment.script == "grid.py":
        flags = ["--data_dir", data_dir, "--dataset", "tiny", "--epochs", "1", "--gpu", "cpu"]
    if experiment.script == "baselines.py":
        flags = ["--data_dir", data_dir, "--dataset", "tiny"]
    save_dir = str(tmp_path / "run")
    assert reproduce.run(name, flags, save_dir) == 0
    assert os.path.exists(os.path.join(save_dir, "results.md" if experiment.script == "grid.py" else "results.json"))


def test_a_missing_lastfm_split_is_made_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "command", lambda argv, env=None: calls.append(argv[1:]) or 0)
    monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))  # no data/ there
    assert reproduce.run("lastfm-neumf", [], str(tmp_path)) == 0
    assert calls[0] == reproduce.SPLITS["lastfm_random"].split()
    assert calls[1][0] == "main.py" and calls[2][0] == "evaluate.py"


@pytest.mark.parametrize("flags", [["--finetune_lr", "0", "--pretrain"], ["--finetune_optim", "sgd"],
                                   ["--finetune_lr", "0.1"], ["--alpha", "1.5"], ["--pretrain_epochs", "0", "--pretrain"],
                                   ["--pretrain_epochs", "2"]])
def test_bad_pretraining_flags_give_one_line_and_status_2(shared_split, tmp_path, flags):
    data_dir, _ = shared_split
    result = run_script("main.py", "--data_dir", data_dir, *TINY, "--save_dir", str(tmp_path / "run"), *flags)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and flags[0] in result.stderr
    assert not os.path.exists(tmp_path / "run")


def test_sgd_fine_tuning_starts_from_the_pretrained_neumf(shared_split, tmp_path):
    data_dir, _ = shared_split
    save_dir = str(tmp_path / "pre")
    done = run_script("main.py", "--data_dir", data_dir, *TINY, "--epochs", "1", "--pretrain", "--pretrain_epochs", "3",
                      "--finetune_optim", "sgd", "--finetune_lr", "1e-9", "--alpha", "0.3", "--save_dir", save_dir)
    assert done.returncode == 0, done.stderr
    assert len(results(os.path.join(save_dir, "gmf"))["history"]) == 3
    assert len(results(os.path.join(save_dir, "mlp"))["history"]) == 3
    config = results(save_dir)["config"]
    assert (config["optim"], config["lr"], config["alpha"]) == ("sgd", 1e-9, 0.3)
    data = dataloader.load(data_dir, "tiny")
    gmf, mlp = (torch.load(os.path.join(save_dir, stage, "best.pt"), weights_only=True)["model"]
                for stage in ("gmf", "mlp"))
    pretrained = load_pretrained(NCF(data.num_users, data.num_items, 8, 3, "neumf"), gmf, mlp, 0.3)
    hr, ndcg = evaluate(pretrained, data.test)
    assert hr > 0.3
    assert (results(save_dir)["hr"], results(save_dir)["ndcg"]) == pytest.approx((hr, ndcg), abs=1e-9)
    tuned = torch.load(os.path.join(save_dir, "best.pt"), weights_only=True)["model"]
    assert all(torch.allclose(tuned[k], v, atol=1e-6) for k, v in pretrained.state_dict().items())
