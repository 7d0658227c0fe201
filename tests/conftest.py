"""Shared test data and runs: a tiny clustered split (one per test, or one per session for tests that only read
it), one tiny model trained once a session by main.py in this process, and the scripts' command lines run in this
process (no interpreter start-up and torch import a command) where the separate process is not what is tested."""
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
# main.py flags of the tiny runs: 200 users, 2,800 training pairs, 55 steps an epoch
TINY = ["--dataset", "tiny", "--batch_size", "256", "--lr", "0.01", "--gpu", "cpu", "--wandb", "disabled"]
TRAINED_EPOCHS = 4


def write_split(data_dir, name="tiny", users=200, items=300, clusters=6, per_user=15, negatives=49, val=False,
                seed=0):
    """A clustered leave-one-out split in the NCF format: each user's items come from one taste cluster,
    so a model that learns co-occurrence ranks the held-out item far above random."""
    rng = np.random.default_rng(seed)
    cluster_size = items // clusters
    lines = {"train.rating": [], "test.rating": [], "test.negative": [], "val.rating": [], "val.negative": []}
    for user in range(users):
        cluster = user % clusters
        chosen = rng.choice(cluster_size, per_user, replace=False) + cluster * cluster_size
        held = {"test": chosen[-1], "val": chosen[-2]} if val else {"test": chosen[-1]}
        train = chosen[:-len(held)]
        lines["train.rating"] += [f"{user}\t{item}\t1\t{t}" for t, item in enumerate(train)]
        unseen = np.setdiff1d(np.arange(items), chosen)
        for part, item in held.items():
            lines[f"{part}.rating"].append(f"{user}\t{item}\t1\t{per_user}")
            sampled = rng.choice(unseen, negatives, replace=False)
            lines[f"{part}.negative"].append(f"({user},{item})\t" + "\t".join(map(str, sampled)))
    for suffix, rows in lines.items():
        if rows:
            with open(os.path.join(data_dir, f"{name}.{suffix}"), "w") as f:
                f.write("\n".join(rows) + "\n")
    return str(data_dir), name


@pytest.fixture
def tiny_split(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return write_split(data_dir)


@pytest.fixture(autouse=True)
def no_wandb_network(monkeypatch, tmp_path):
    for variable in ("WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def results(save_dir):
    with open(os.path.join(save_dir, "results.json")) as f:
        return json.load(f)


def wandb_offline_env(mp, home):
    """What no_wandb_network sets, for fixtures wider than a test: no login, no network, wandb's files in `home`."""
    for variable in ("WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):
        mp.setenv(variable, str(home))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_API_KEY", raising=False)


def run_script(script, *args, cwd=None, env=None):
    """`python3 SCRIPT ARGS` run in this process: a CompletedProcess with the exit status and what it printed.
    `env`: variables to set (None: to remove) while it runs. An uncaught exception propagates (fails the test)."""
    module = importlib.import_module(script.removesuffix(".py"))
    entry = getattr(module, {"grid.py": "run_grid", "bench.py": "bench"}.get(script, "main"))
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [script, *map(str, args)])
        if cwd is not None:
            mp.chdir(cwd)
        for name, value in (env or {}).items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            from utils import exit_status, run_cli
            try:
                run_cli(entry)
                status = 0
            except SystemExit as e:
                status = exit_status(e)
    return subprocess.CompletedProcess([script, *args], status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def shared_split(tmp_path_factory):
    """The tiny split, written once a session: for tests that only read it."""
    return write_split(tmp_path_factory.mktemp("shared_split"))


@pytest.fixture(scope="session")
def trained_run(shared_split, tmp_path_factory):
    """One tiny NeuMF trained once a session by `python3 main.py` run in this process (TRAINED_EPOCHS epochs,
    --wandb auto without credentials, so offline; loss logged every 5 steps; best.pt uploaded as a model
    artifact): (save_dir, what it printed). Tests read it and must not change it."""
    save_dir = str(tmp_path_factory.mktemp("trained_run") / "run")
    with pytest.MonkeyPatch.context() as mp:
        wandb_offline_env(mp, tmp_path_factory.mktemp("wandb-home"))
        mp.delenv("WANDB_MODE")
        done = run_script("main.py", "--data_dir", shared_split[0], *TINY[:-2], "--wandb", "auto",
                          "--epochs", TRAINED_EPOCHS, "--log_every", "5", "--log_model", "--save_dir", save_dir)
    assert done.returncode == 0, done.stderr
    return save_dir, done.stdout
