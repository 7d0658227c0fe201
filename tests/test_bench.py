import json
import subprocess
import sys

from conftest import REPO


def test_bench_reports_every_figure(tiny_split, tmp_path):
    data_dir, name = tiny_split
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench.py", "--data_dir", data_dir, "--dataset", name, "--gpu", "cpu",
                             "--full_users", "50", "--per_sample_steps", "2", "--json", str(out)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    figures = report["figures"]
    for key in ("load_seconds", "sampling_seconds", "epoch_seconds", "samples_per_second",
                "training_samples_per_second", "sampled_eval_seconds", "full_eval_seconds_per_1000_users",
                "per_sample_pipeline_samples_per_second", "peak_rss_gib"):
        assert figures[key] > 0, key
    assert report["data"]["samples_per_epoch"] == 2800 * 5
    assert report["config"]["batch_size"] == 1024 and report["config"]["num_neg"] == 4
    assert "samples_per_second" in result.stdout


def test_bench_bad_flag(tmp_path):
    result = subprocess.run([sys.executable, "bench.py", "--batch_size", "0"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--batch_size" in result.stderr
