import json
import os
import sys

import pytest

import bench
from utils import run_cli


def run_bench(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench.py", *argv])
    run_cli(bench.bench)


def test_bench_reports_every_figure(tiny_split, tmp_path, monkeypatch, capsys):
    data_dir, name = tiny_split
    out = tmp_path / "bench.json"
    startups = []  # main.py's start-up is measured in processes of its own: below, on its own
    monkeypatch.setattr(bench, "startup_seconds", lambda argv, runs: startups.append((argv, runs)) or (0.25, 1.5))
    run_bench(["--data_dir", data_dir, "--dataset", name, "--gpu", "cpu", "--full_users", "50",
               "--per_sample_steps", "2", "--startup", "3", "--json", str(out)], monkeypatch)
    assert startups == [(["--data_dir", "data/bench", "--dataset", "melon_syn", "--wandb", "disabled", "--data_dir",
                          data_dir, "--dataset", name, "--gpu", "cpu"], 3)]
    report = json.loads(out.read_text())
    figures = report["figures"]
    for key in ("load_seconds", "sampling_seconds", "epoch_seconds", "samples_per_second",
                "training_samples_per_second", "sampled_eval_seconds", "full_eval_seconds_per_1000_users",
                "per_sample_pipeline_samples_per_second", "peak_rss_gib", "import_torch_seconds"):
        assert figures[key] > 0, key
    assert (figures["startup_seconds"], figures["import_torch_seconds"]) == (0.25, 1.5)
    assert report["data"]["samples_per_epoch"] == 2800 * 5
    assert report["config"]["batch_size"] == 1024 and report["config"]["num_neg"] == 4
    assert "samples_per_second" in capsys.readouterr().out


def test_startup_is_the_process_minus_its_epoch_and_import_torch(tiny_split, monkeypatch):
    data_dir, name = tiny_split
    clock = iter([0.0, 5.0, 10.0, 12.0])  # main.py: 5 s of wall time (2 s of it its epoch); import torch: 2 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench.subprocess, "run", lambda command, **kwargs: command[1] == "main.py" and write_results(
        command[command.index("--save_dir") + 1]))

    def write_results(save_dir):
        os.makedirs(save_dir)
        with open(os.path.join(save_dir, "results.json"), "w") as f:
            json.dump({"history": [{"train_seconds": 1.5, "eval_seconds": 0.5}]}, f)

    assert bench.startup_seconds(["--data_dir", data_dir, "--dataset", name], 1) == (1.0, 2.0)


def test_help_shows_bench_flags_then_main_flags(monkeypatch, capsys):
    with pytest.raises(SystemExit) as done:
        run_bench(["--help"], monkeypatch)
    assert done.value.code == 0
    out = capsys.readouterr().out
    own = [out.index(flag) for flag in ("--json", "--full_users", "--per_sample_steps", "--startup")]
    main_flags = [out.index(flag) for flag in ("--latent_dim_mf", "--num_neg", "--no-exclude_test_neg")]
    assert max(own) < out.index("usage: main.py") < min(main_flags)
    assert "Train GMF, MLP, NeuMF or MF" in out  # main.py's description


@pytest.mark.parametrize("flag", [["--batch_size", "0"], ["--startup", "-1"]])
def test_bench_bad_flag(monkeypatch, capsys, flag):
    with pytest.raises(SystemExit) as done:
        run_bench(flag, monkeypatch)
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and flag[0] in err
