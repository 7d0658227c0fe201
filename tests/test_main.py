import math
import os
import subprocess
import sys

import pytest
import torch

import scoring
import main
from conftest import REPO, TINY, TRAINED_EPOCHS, results, run_script
from utils import run_cli
from wandb_records import read_run


def run_main(*args, check=True):
    """main.py in a process of its own, as a user runs it."""
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, WANDB_MODE="offline"))
    if check:
        assert result.returncode == 0, result.stderr
    return result


def main_in_process(*args, check=True):
    """main.py's command line run in this process."""
    result = run_script("main.py", *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_tiny_run_learns_and_writes_outputs(trained_run):
    save_dir, out = trained_run
    summary = results(save_dir)
    assert summary["hr"] > 0.6  # random scoring of 1 held-out item among 50 candidates gives HR@10 = 0.2
    assert [r["epoch"] for r in summary["history"]] == list(range(1, TRAINED_EPOCHS + 1))
    assert set(summary["history"][0]) == {"epoch", "loss", "hr", "ndcg", "train_seconds", "eval_seconds",
                                          "samples_per_second"}
    best = max(summary["history"], key=lambda r: r["ndcg"])
    assert (summary["best_epoch"], summary["hr"], summary["ndcg"]) == (best["epoch"], best["hr"], best["ndcg"])
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert out.strip().splitlines()[-1] == f"best epoch {best['epoch']}: HR@10 {best['hr']:.4f} NDCG@10 {best['ndcg']:.4f}"
    assert "epoch 1 loss" in out and "HR@10" in out
    for name, keys in (("best.pt", {"config", "model", "epoch"}), ("last.pt", {"optimizer", "rng"})):
        assert keys <= torch.load(os.path.join(save_dir, name), weights_only=True).keys()
    assert torch.load(os.path.join(save_dir, "last.pt"), weights_only=True)["epoch"] == TRAINED_EPOCHS


def test_resume_reaches_the_same_metrics_as_an_uninterrupted_run(shared_split, trained_run, tmp_path):
    """Two epochs, then --resume to the end: the uninterrupted run's losses and metrics (trained_run's, which also
    logged to wandb: logging changes no figure)."""
    data_dir, _ = shared_split
    whole, part = trained_run[0], str(tmp_path / "part")
    main_in_process("--data_dir", data_dir, *TINY, "--epochs", "2", "--log_every", "5", "--save_dir", part)
    out = main_in_process("--resume", os.path.join(part, "last.pt"), "--epochs", str(TRAINED_EPOCHS)).stdout
    assert "resuming" in out and "epoch 3 loss" in out and "epoch 1 loss" not in out

    def metrics(history):
        return [(r["epoch"], r["loss"], r["hr"], r["ndcg"]) for r in history]

    assert metrics(results(part)["history"]) == metrics(results(whole)["history"])
    assert results(part)["best_epoch"] == results(whole)["best_epoch"]


def test_optimizers_and_models_run(shared_split, tmp_path):
    data_dir, _ = shared_split
    for extra in (["--optim", "sgd", "--lr", "0.1"], ["--optim", "adagrad"], ["--optim", "rmsprop"],
                  ["--model", "gmf"], ["--model", "mlp", "--num_layers", "1"], ["--model", "mf"], ["--amp", "True"],
                  ["--no-sparse", "False"]):
        save_dir = str(tmp_path / "_".join(extra))
        flags = extra if not extra[1] in ("True", "False") else extra[:1]
        main_in_process("--data_dir", data_dir, *TINY, "--epochs", "1", "--save_dir", save_dir, *flags)
        assert str(results(save_dir)["config"][extra[0].lstrip("-").removeprefix("no-")]) == extra[1]
        assert results(save_dir)["hr"] > 0


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--batch_size", "-1"), ("--lr", "0"),
                                        ("--num_neg", "0"), ("--optim", "lbfgs"), ("--gpu", "x1"),
                                        ("--latent_dim_mf", "abc"), ("--l2", "-0.1"), ("--pretrain_gmf", "a.pt")])
def test_bad_flags_give_one_line_and_status_2(shared_split, tmp_path, monkeypatch, capsys, flag, value):
    data_dir, _ = shared_split
    monkeypatch.setattr(sys, "argv", ["main.py", "--data_dir", data_dir, *TINY, "--save_dir", str(tmp_path / "run"),
                                      flag, value])
    with pytest.raises(SystemExit) as exit_:
        run_cli(main.main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert not os.path.exists(tmp_path / "run")


def test_missing_split_and_corrupt_checkpoint(shared_split, tmp_path):
    data_dir, _ = shared_split
    result = main_in_process("--data_dir", data_dir, "--dataset", "nope", "--gpu", "cpu", "--wandb", "disabled",
                             check=False)
    assert result.returncode == 2 and "nope.train.rating" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    corrupt = tmp_path / "last.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    for command in (["main.py", "--resume", str(corrupt)], ["evaluate.py", "--checkpoint", str(corrupt)]):
        result = run_script(*command, "--gpu", "cpu")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(corrupt) in result.stderr


def test_main_as_a_process(shared_split, tmp_path):
    """`python3 main.py` end to end in a process of its own (evaluate.py's own process: test_runs.py)."""
    data_dir, _ = shared_split
    save_dir = str(tmp_path / "run")
    out = run_main("--data_dir", data_dir, *TINY, "--epochs", "2", "--save_dir", save_dir).stdout
    summary = results(save_dir)
    assert out.strip().splitlines()[-1] == \
        f"best epoch {summary['best_epoch']}: HR@10 {summary['hr']:.4f} NDCG@10 {summary['ndcg']:.4f}"
    assert {"results.json", "results.md", "best.pt", "last.pt"} <= set(os.listdir(save_dir))


def test_evaluate_cli_scores_the_best_checkpoint(trained_run):
    save_dir, _ = trained_run
    out = run_script("evaluate.py", "--checkpoint", os.path.join(save_dir, "best.pt"), "--gpu", "cpu").stdout
    summary = results(save_dir)
    assert f"HR@10 {summary['hr']:.4f} NDCG@10 {summary['ndcg']:.4f}" in out


def test_wandb_auto_without_credentials_logs_offline(trained_run):
    save_dir, _ = trained_run
    logged = read_run(save_dir)
    summary = results(save_dir)
    assert logged["config"]["lr"] == 0.01 and logged["config"]["num_neg"] == 4
    assert logged["config"]["num_users"] == 200 and logged["config"]["num_items"] == 300
    steps = [row for row in logged["history"] if "train/loss" in row]
    assert len(steps) == TRAINED_EPOCHS * (math.ceil(2800 * 5 / 256) // 5)  # a loss point every 5 of 55 steps
    epochs = [row for row in logged["history"] if "test/hr@10" in row]
    assert [row["epoch"] for row in epochs] == list(range(1, TRAINED_EPOCHS + 1))
    assert [row["test/ndcg@10"] for row in epochs] == [r["ndcg"] for r in summary["history"]]
    assert {"epoch_loss", "train_seconds", "eval_seconds", "samples_per_second"} <= epochs[0].keys()
    assert logged["summary"]["best/hr@10"] == summary["hr"]
    assert logged["summary"]["best_epoch"] == summary["best_epoch"]
    assert all("recommendations" in row for row in epochs)  # a table of recommendations at every evaluation
    table = logged["tables"]["recommendations"]
    assert table["columns"] == ["epoch", "playlist", "rank", "song_id", "score"]
    assert len(table["data"]) == 3 * 10 and {row[0] for row in table["data"]} == {TRAINED_EPOCHS}
    assert [row[2] for row in table["data"][:10]] == list(range(1, 11))
    assert {"type": "model", "name": "neumf-tiny", "aliases": ["latest"]} in logged["artifacts"]


def test_results_md_has_the_epochs_and_recommendations(shared_split, trained_run):
    data_dir, _ = shared_split
    save_dir, _ = trained_run
    summary = results(save_dir)
    with open(os.path.join(save_dir, "results.md")) as f:
        report = f.read()
    for record in summary["history"]:
        assert f"| {record['epoch']} | {record['loss']:.4f} | {record['hr']:.4f} | {record['ndcg']:.4f} |" in report
    recommended = [line.split(" | ") for line in report.splitlines() if line.startswith("| 0 | ")]
    assert [int(row[1]) for row in recommended] == list(range(1, 11))  # playlist 0, ranks 1..10
    train_items = {int(line.split()[1]) for line in open(os.path.join(data_dir, "tiny.train.rating"))
                   if line.split()[0] == "0"}
    assert not {int(row[2]) for row in recommended} & train_items


def test_pretrain_runs_three_stages_and_neumf_starts_from_them(shared_split, tmp_path):
    import dataloader
    from model import NCF, load_pretrained
    data_dir, name = shared_split
    save_dir = str(tmp_path / "run")
    out = main_in_process("--data_dir", data_dir, *TINY, "--epochs", "3", "--pretrain", "--save_dir", save_dir).stdout
    assert [results(os.path.join(save_dir, stage))["config"]["model"] for stage in ("gmf", "mlp")] == ["gmf", "mlp"]
    final = results(save_dir)
    assert final["config"]["pretrain_gmf"] == os.path.join(save_dir, "gmf", "best.pt")
    assert out.strip().splitlines()[-1].startswith(f"best epoch {final['best_epoch']}:")

    data = dataloader.load(data_dir, name)
    users, items, labels = dataloader.epoch_samples(data, 4, seed=5, epoch=1)
    gmf, mlp = (torch.load(os.path.join(save_dir, stage, "best.pt"), weights_only=True)["model"]
                for stage in ("gmf", "mlp"))
    torch.manual_seed(0)
    pretrained = load_pretrained(NCF(data.num_users, data.num_items, 8, 3, "neumf"), gmf, mlp)
    scratch = NCF(data.num_users, data.num_items, 8, 3, "neumf")
    with torch.no_grad():
        def loss(model):
            return torch.nn.functional.binary_cross_entropy_with_logits(model(users, items), labels).item()
        assert loss(pretrained) < loss(scratch) - 0.05


def test_validation_selects_the_epoch_without_reading_test_metrics(tmp_path, monkeypatch):
    from conftest import write_split
    data_dir, name = write_split(tmp_path, val=True)
    calls = []

    def fake_ranks(model, candidates):
        # The test ranks get worse every epoch and the validation ranks better: selection must follow val.
        calls.append(candidates)  # each epoch ranks the test candidates, then the validation ones
        epoch = (len(calls) + 1) // 2
        return torch.full((len(candidates.users),), epoch - 1 if len(calls) % 2 else 9 - epoch)

    monkeypatch.setattr(scoring, "sampled_ranks", fake_ranks)
    save_dir = str(tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["main.py", "--data_dir", data_dir, "--dataset", name, *TINY[2:],
                                      "--epochs", "3", "--save_dir", save_dir])
    main.main()
    summary = results(save_dir)
    assert summary["selection"] == "val"
    assert [r["val_ndcg"] for r in summary["history"]] == pytest.approx([1 / math.log2(rank + 2) for rank in (8, 7, 6)])
    assert summary["best_epoch"] == 3 and summary["ndcg"] == pytest.approx(0.5)  # test NDCG at the val-chosen epoch


def test_each_sweep_run_gets_its_own_save_dir(shared_split, tmp_path, monkeypatch):
    """Under a wandb sweep agent (WANDB_SWEEP_ID and WANDB_RUN_ID set), the default save_dir is one per run."""
    data_dir, _ = shared_split
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    for run_id, num_neg in (("run1", "1"), ("run2", "2")):
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        main.main(["--data_dir", data_dir, *TINY, "--epochs", "1", "--num_neg", num_neg])
    for run_id, num_neg in (("run1", 1), ("run2", 2)):
        assert results(os.path.join("runs", "tiny", "sweep-sw1", run_id))["config"]["num_neg"] == num_neg
    assert not os.path.exists(os.path.join("runs", "tiny", "results.json"))
