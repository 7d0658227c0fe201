"""Distributed training (torchrun, gloo on the CPU, 2 ranks) and faults: SIGINT, SIGKILL, torchrun restarts, NaN."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import dataloader
import distributed
import main
from conftest import REPO, run_script, wandb_offline_env, write_split

# 16,800 samples an epoch (2,800 positives, 5 negatives each) in global batches of 157: the last batch of every
# epoch has one sample, so on two ranks rank 1's shard of it is empty
FLAGS = ["--dataset", "tiny", "--batch_size", "157", "--num_neg", "5", "--lr", "0.01", "--gpu", "cpu", "--epochs", "3"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def start(command, cwd=REPO, **kwargs):
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, WANDB_MODE="offline"), **kwargs)


def finish(process, status=0):
    out, _ = process.communicate(timeout=300)
    assert process.returncode == status, out
    return out


def results(save_dir):
    with open(os.path.join(save_dir, "results.json")) as f:
        return json.load(f)


def metrics(save_dir):
    return [(r["epoch"], r["hr"], r["ndcg"]) for r in results(save_dir)["history"]]


def wait_for_epoch(path, epoch, process):
    """Wait until the checkpoint at `path` has finished `epoch` (the run is then inside the next epoch)."""
    while not (os.path.exists(path) and torch.load(path, weights_only=True)["epoch"] >= epoch):
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_split(directory)
    return str(directory)


@pytest.fixture(scope="module")
def two_ranks(data_dir, tmp_path_factory):
    """An uninterrupted 2-rank run started by main.py's own launcher (distributed.spawn, which --gpu 2,3 uses
    without torchrun; torchrun's: test_torchrun_restart_resumes_from_last_pt), logged to wandb offline:
    (save_dir, what its ranks printed)."""
    save_dir = str(tmp_path_factory.mktemp("two_ranks") / "run")
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryFile("w+") as printed:
        wandb_offline_env(mp, tmp_path_factory.mktemp("wandb-home"))
        sys.stdout.flush()
        stdout = os.dup(1)
        os.dup2(printed.fileno(), 1)  # the ranks' standard output (file descriptor 1, which they inherit)
        try:
            status = distributed.spawn(main.main, ["--data_dir", data_dir, *FLAGS, "--wandb", "offline",
                                                   "--save_dir", save_dir], 2)
        finally:
            os.dup2(stdout, 1)
            os.close(stdout)
        printed.seek(0)
        out = printed.read()
    assert status == 0, out
    return save_dir, out


def test_shards_are_disjoint_balanced_and_cover_each_batch(data_dir):
    data = dataloader.load(data_dir, "tiny")
    users, items, labels = dataloader.epoch_samples(data, 4, seed=1, epoch=1)
    index = torch.arange(len(users))
    batch_size, world_size = 1000, 3
    shards = [list(dataloader.batches([index, labels], batch_size, rank, world_size)) for rank in range(world_size)]
    for step, batch in enumerate(dataloader.batches([index], batch_size)):
        parts = [shards[rank][step][0] for rank in range(world_size)]
        assert sorted(torch.cat(parts).tolist()) == batch[0].tolist()  # disjoint and covering the batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for rank in range(world_size):
        rank_labels = torch.cat([labels for _, labels in shards[rank]])
        assert abs(rank_labels.mean().item() - 0.2) < 0.02  # 1 positive in 5 on every rank, not all on one
    resumed = list(dataloader.batches([index], batch_size, 1, world_size, start=2))
    assert [b[0].tolist() for b in resumed] == [s[0].tolist() for s in shards[1][2:]]


def test_two_ranks_match_one_rank_even_with_an_empty_shard(data_dir, two_ranks, tmp_path):
    """Every epoch ends on a one-sample batch, which rank 1 has no share of: the run is still the one-process run
    (its ranks and metrics to 6 decimals; the losses up to float rounding)."""
    save_dir, out = two_ranks
    assert "2 processes" in out and out.count("epoch 1 loss") == 1  # only rank 0 prints
    assert out.strip().splitlines()[-1].startswith("best epoch")
    one = str(tmp_path / "one")
    assert run_script("main.py", "--data_dir", data_dir, *FLAGS, "--wandb", "disabled", "--save_dir", one).returncode == 0
    assert [(e, round(hr, 6), round(ndcg, 6)) for e, hr, ndcg in metrics(save_dir)] == \
        [(e, round(hr, 6), round(ndcg, 6)) for e, hr, ndcg in metrics(one)]
    assert [r["loss"] for r in results(save_dir)["history"]] == \
        pytest.approx([r["loss"] for r in results(one)["history"]], abs=1e-6)
    assert results(save_dir)["hr"] > 0.6  # it learns (random: 0.2)
    written = {os.path.relpath(p, save_dir) for p in glob.glob(os.path.join(save_dir, "**"), recursive=True)}
    assert {"results.json", "best.pt", "last.pt"} <= written
    assert len(glob.glob(os.path.join(save_dir, "wandb", "offline-run-*"))) == 1


EXITS = [  # what a rank's main does; its exit status, standard output and error
    ("print('done', end='')", 0, "done", ""),  # buffered output still reaches the pipe
    ("print('stopping'); sys.exit(130)", 130, "stopping\n", ""),
    ("raise utils.InputError('bad.json: line 3')", 2, "", "error: bad.json: line 3\n"),
    ("raise RuntimeError('boom')", 1, "", "RuntimeError: boom"),
]
IN_PROCESSES = (EXITS[0][0], EXITS[3][0])  # run as real ranks; the others in this process, os._exit stubbed


@pytest.fixture(scope="module")
def rank_exits():
    """The IN_PROCESSES bodies as the main of a rank (RANK 0 of WORLD_SIZE 1) run through run_process, the
    processes started at once: {body: (exit status, stdout, stderr)}."""
    processes = {body: subprocess.Popen(
        [sys.executable, "-c", f"import sys, distributed, utils\ndef main():\n    {body}\ndistributed.run_process(main)"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, RANK="0", WORLD_SIZE="1")) for body in IN_PROCESSES}
    finished = {}
    for body, process in processes.items():
        out, err = process.communicate(timeout=120)
        finished[body] = process.returncode, out, err
    return finished


class Exited(Exception):
    pass


def exit_in_process(body, monkeypatch, capsys):
    """(exit status, stdout, stderr) of run_process on `body` in this process, with os._exit (and the process's
    exit handlers) stubbed out."""
    import utils
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed.multiprocessing.util, "_exit_function", lambda: None)

    def exit_(status):
        raise Exited(status)

    monkeypatch.setattr(distributed.os, "_exit", exit_)
    namespace = {"sys": sys, "utils": utils}
    exec(f"def main():\n    {body}", namespace)
    capsys.readouterr()
    with pytest.raises(Exited) as exited:
        distributed.run_process(namespace["main"])
    out, err = capsys.readouterr()
    return exited.value.args[0], out, err


@pytest.mark.parametrize("body, status, stdout, stderr", EXITS)
def test_a_rank_exits_with_its_status_and_output(rank_exits, monkeypatch, capsys, body, status, stdout, stderr):
    """run_process ends a rank with os._exit: the exit status, the output and the one-line errors must survive."""
    returncode, out, err = rank_exits[body] if body in IN_PROCESSES else exit_in_process(body, monkeypatch, capsys)
    assert (returncode, out) == (status, stdout)
    assert err == stderr if status != 1 else stderr in err and "Traceback" in err


# long epochs (3,500 steps of 4 samples), so that a signal sent early in epoch 2 finds the run inside it
SMALL_BATCHES = ["main.py", *FLAGS, "--batch_size", "4", "--num_neg", "4", "--epochs", "2", "--wandb", "disabled"]


@pytest.fixture(scope="module")
def whole(data_dir, tmp_path_factory):
    """save_dir of an uninterrupted 1-rank run with SMALL_BATCHES (run in this process)."""
    save_dir = str(tmp_path_factory.mktemp("whole") / "run")
    assert run_script(*SMALL_BATCHES, "--data_dir", data_dir, "--save_dir", save_dir).returncode == 0
    return save_dir


def interrupted_run(data_dir, tmp_path):
    """(save_dir, process) of the run `whole` made, started again and now inside epoch 2."""
    part = str(tmp_path / "part")
    process = start([sys.executable, *SMALL_BATCHES, "--data_dir", data_dir, "--save_dir", part])
    wait_for_epoch(os.path.join(part, "last.pt"), 1, process)
    time.sleep(0.3)
    return part, process


def test_sigint_saves_a_resumable_last_pt(data_dir, whole, tmp_path):
    part, process = interrupted_run(data_dir, tmp_path)
    process.send_signal(signal.SIGINT)
    out = finish(process, 128 + signal.SIGINT)
    assert "Traceback" not in out and f"--resume {os.path.join(part, 'last.pt')}" in out
    checkpoint = torch.load(os.path.join(part, "last.pt"), weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["step"] > 0  # stopped inside epoch 2, after a whole step
    assert not os.path.exists(os.path.join(part, "results.json"))
    assert run_script("main.py", "--resume", os.path.join(part, "last.pt")).returncode == 0
    assert [(r["loss"], r["hr"], r["ndcg"]) for r in results(part)["history"]] == \
        [(r["loss"], r["hr"], r["ndcg"]) for r in results(whole)["history"]]


def test_sigkill_then_resume_matches_an_uninterrupted_run(data_dir, whole, tmp_path):
    part, process = interrupted_run(data_dir, tmp_path)
    process.kill()
    process.wait()
    assert torch.load(os.path.join(part, "last.pt"), weights_only=True)["epoch"] in (1, 2)  # complete, loadable
    assert run_script("main.py", "--resume", os.path.join(part, "last.pt")).returncode == 0
    assert metrics(part) == metrics(whole)


def test_torchrun_restart_resumes_from_last_pt(data_dir, two_ranks, tmp_path):
    """The restarted workers continue in the run's own directory: the default one the first attempt made
    (runs/DATASET/TIMESTAMP, found again through torchrun's store), which holds its last.pt and lock; and reach
    exactly the uninterrupted two-rank run of main.py's own launcher (so torchrun's ranks and spawn's are one run,
    to the last bit)."""
    process = start([*TORCHRUN, "--max_restarts", "1", os.path.join(REPO, "main.py"), "--data_dir", data_dir,
                     *FLAGS, "--wandb", "disabled"], cwd=tmp_path)
    wait_for_epoch(str(tmp_path / "runs" / "tiny" / "latest" / "last.pt"), 1, process)
    workers = subprocess.run(["ps", "--ppid", str(process.pid), "-o", "pid="], capture_output=True, text=True)
    os.kill(int(workers.stdout.split()[0]), signal.SIGKILL)
    out = finish(process)
    assert "restarted: resuming" in out
    assert len(os.listdir(tmp_path / "runs" / "tiny")) == 2  # one run directory and latest
    save_dir = os.path.realpath(tmp_path / "runs" / "tiny" / "latest")
    assert [(r["loss"], r["hr"], r["ndcg"]) for r in results(save_dir)["history"]] == \
        [(r["loss"], r["hr"], r["ndcg"]) for r in results(two_ranks[0])["history"]]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    epoch_samples = dataloader.epoch_samples

    def poisoned(data, num_neg, seed, epoch):
        users, items, labels = epoch_samples(data, num_neg, seed, epoch)
        return users, items, labels * float("nan") if epoch == 3 else labels

    monkeypatch.setattr(dataloader, "epoch_samples", poisoned)
    save_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as stopped:
        main.main(["--data_dir", data_dir, *FLAGS, "--wandb", "disabled", "--save_dir", save_dir])
    assert stopped.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss became nan in epoch 3" in error and os.path.join(save_dir, "last.pt") in error
    assert torch.load(os.path.join(save_dir, "last.pt"), weights_only=True)["epoch"] == 2
    assert not os.path.exists(os.path.join(save_dir, "results.json"))
