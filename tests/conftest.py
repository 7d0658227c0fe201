import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


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
