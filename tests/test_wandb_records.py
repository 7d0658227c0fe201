"""Round-trip a real offline wandb run through tests/wandb_records.read_run (no network, no login)."""
import os
import sys

import pytest
import wandb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wandb_records import BLOCK_SIZE, find_wandb_file, read_run  # noqa: E402

STEPS = 3000
NOTE = "".join(chr(ord("a") + i % 26) for i in range(100_000))  # one record > 3 blocks: first/middle/last chunks
COLUMNS, ROWS = ["user", "item", "score"], [[0, 5, 0.25], [1, 7, None], [2, 9, 1.5]]


def metrics(i):
    return {"loss": 1 / (i + 1), "epoch": i // 100, "hr@10": i / 7, "ndcg@10": i / 13, "phase": f"p{i % 3}"}


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("save")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        for var in ("WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):  # keep ~ untouched
            mp.setenv(var, str(save_dir / "wandb_home"))
        run = wandb.init(mode="offline", dir=str(save_dir), project="recommendation",
                         config={"lr": 0.001, "nested": {"a": 1}})
        for i in range(STEPS):
            run.log(metrics(i))
        run.summary["best_hr"] = 0.5
        run.log({"top": wandb.Table(columns=COLUMNS, data=ROWS), "note": NOTE})
        run.finish()
    return save_dir


def test_history_config_summary(save_dir):
    wandb_file = find_wandb_file(save_dir)
    assert wandb_file.parent.name.startswith("offline-run-") and wandb_file.parent.parent.name == "wandb"
    assert wandb_file.stat().st_size > 10 * BLOCK_SIZE  # records straddle many 32 KiB blocks

    run = read_run(save_dir)
    assert run == read_run(wandb_file)
    assert run["config"] == {"lr": 0.001, "nested": {"a": 1}}

    history = run["history"]
    assert len(history) == STEPS + 1
    auto = {"_step", "_runtime", "_timestamp"}
    for i, row in enumerate(history[:STEPS]):
        assert set(row) == set(metrics(i)) | auto
        assert {k: row[k] for k in metrics(i)} == metrics(i)
        assert row["_step"] == i
    last = history[STEPS]
    assert set(last) == {"top", "note"} | auto and last["_step"] == STEPS
    assert last["note"] == NOTE
    assert last["top"]["_type"] == "table-file" and last["top"]["nrows"] == 3

    summary = run["summary"]
    assert summary["best_hr"] == 0.5
    assert {k: summary[k] for k in metrics(STEPS - 1)} == metrics(STEPS - 1)
    assert summary["_step"] == STEPS and summary["note"] == NOTE
    assert summary["top"]["path"] == last["top"]["path"]

    assert run["tables"] == {"top": {"columns": COLUMNS, "data": ROWS}}
    assert last["top"]["path"] in run["files"]
    assert [a["type"] for a in run["artifacts"]] == ["run_table"]
    assert run["run"]["project"] == "recommendation"


def test_torn_tail_and_corruption(save_dir, tmp_path):
    data = find_wandb_file(save_dir).read_bytes()
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(data[: 5 * BLOCK_SIZE + 100])  # killed mid-write: keep the complete records only
    history = read_run(torn)["history"]
    assert 0 < len(history) < STEPS
    assert history == read_run(save_dir)["history"][: len(history)]

    bad = bytearray(data)
    bad[3 * BLOCK_SIZE + 20] ^= 0xFF
    corrupt = tmp_path / "corrupt.wandb"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="crc"):
        read_run(corrupt)
