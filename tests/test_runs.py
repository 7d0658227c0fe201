"""Runs lose nothing and follow wandb's conventions: a directory per run (runs/DATASET/latest), no overwritten or
interleaved runs, wandb's environment variables, the offline fallback without a network, wandb failures that cost
the logging only, provenance, and one-line errors for bad input."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

import main
import runs
import wandb_log
from conftest import REPO, run_script, write_split
from utils import lock_directory, run_cli
from wandb_records import read_run

TINY = ["--dataset", "tiny", "--batch_size", "256", "--lr", "0.01", "--gpu", "cpu", "--epochs", "2"]
MAIN = os.path.join(REPO, "main.py")


def run(*args, cwd, env=None, wandb_mode=None):
    """main.py in a process of its own started in `cwd`, as from a shell; WANDB_MODE from `wandb_mode` (unset when
    None)."""
    environment = dict(os.environ, **(env or {}))
    environment.pop("WANDB_MODE", None)
    if wandb_mode:
        environment["WANDB_MODE"] = wandb_mode
    return subprocess.run([sys.executable, MAIN, *args], cwd=cwd, capture_output=True, text=True, env=environment,
                          timeout=300)


def run_here(*args, cwd, env=None, wandb_mode=None):
    """The same command line run in this process (for what does not depend on a fresh process)."""
    return run_script("main.py", *args, cwd=cwd, env=dict(env or {}, WANDB_MODE=wandb_mode))


def results(save_dir):
    with open(os.path.join(save_dir, "results.json")) as f:
        return json.load(f)


def files_of(directory):
    """{relative path: bytes} of every file under `directory`, wandb's own files aside."""
    out = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "wandb"]
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return out


def one_line_error(capsys, exit_info):
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def workdir(shared_split, tmp_path, monkeypatch):
    """(data_dir, a fresh working directory made the current one): runs/ lands there."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return shared_split[0], cwd


def main_cli(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main.main)
    return exit_info


# --- item 3: a directory per run ---

def test_each_run_gets_its_own_directory_and_latest_points_to_the_newest(workdir, monkeypatch):
    data_dir, cwd = workdir
    flags = ["--data_dir", data_dir, *TINY, "--wandb", "disabled"]
    main.main(flags)
    first = os.path.realpath("runs/tiny/latest")
    kept = files_of(first)
    assert {"results.json", "results.md", "best.pt", "last.pt"} <= kept.keys()
    main.main([*flags, "--epochs", "1"])
    second = os.path.realpath("runs/tiny/latest")
    assert second != first and os.path.dirname(second) == os.path.dirname(first)
    assert files_of(first) == kept  # the first run lost nothing
    assert [r["epoch"] for r in results(second)["history"]] == [1]
    assert results(second)["config"]["save_dir"] == os.path.relpath(second, cwd)
    assert os.readlink("runs/tiny/latest") == os.path.basename(second)  # relative: the tree can move
    # the README's commands through latest/
    out = run_script("evaluate.py", "--checkpoint", "runs/tiny/latest/best.pt", "--gpu", "cpu")
    assert f"NDCG@10 {results(second)['ndcg']:.4f}" in out.stdout
    main.main(["--resume", "runs/tiny/latest/last.pt", "--epochs", "2"])
    assert [r["epoch"] for r in results(second)["history"]] == [1, 2]  # continued in the run's own directory
    assert os.path.realpath("runs/tiny/latest") == second


def test_run_names_are_unique_within_a_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20250101-120000")
    names = [runs.new_run_dir(str(tmp_path / "runs"))[0] for _ in range(3)]
    assert [os.path.basename(n) for n in names] == ["20250101-120000", "20250101-120000-2", "20250101-120000-3"]


def test_a_save_dir_holding_a_run_is_refused_unless_overwrite(workdir, monkeypatch, capsys):
    data_dir, cwd = workdir
    save_dir = str(cwd / "mine")
    flags = ["--data_dir", data_dir, *TINY, "--wandb", "disabled", "--save_dir", save_dir]
    main.main(flags)
    kept = files_of(save_dir)
    capsys.readouterr()
    error = one_line_error(capsys, main_cli([*flags, "--epochs", "1"], monkeypatch))
    assert save_dir in error and "--resume" in error and "--overwrite" in error
    assert files_of(save_dir) == kept
    main.main([*flags, "--epochs", "1", "--overwrite"])
    assert [r["epoch"] for r in results(save_dir)["history"]] == [1]
    # an unfinished run (last.pt only) is protected too
    os.remove(os.path.join(save_dir, "results.json"))
    one_line_error(capsys, main_cli(flags, monkeypatch))
    assert os.path.exists(os.path.join(save_dir, "last.pt"))


def test_a_save_dir_in_use_by_another_run_is_refused(workdir, monkeypatch, capsys):
    data_dir, cwd = workdir
    save_dir = str(cwd / "busy")
    os.makedirs(save_dir)
    held = lock_directory(save_dir)  # as a run in progress holds it
    try:
        error = one_line_error(capsys, main_cli(["--data_dir", data_dir, *TINY, "--wandb", "disabled",
                                                 "--save_dir", save_dir], monkeypatch))
    finally:
        held.close()
    assert "in use by a run still in progress" in error and f"pid {os.getpid()}" in error
    assert os.listdir(save_dir) == [".lock"]


def test_two_runs_started_at_once_into_one_directory_do_not_interleave(tiny_split, tmp_path):
    data_dir, _ = tiny_split
    save_dir = str(tmp_path / "shared")
    command = [sys.executable, MAIN, "--data_dir", data_dir, *TINY, "--epochs", "3", "--wandb", "disabled",
               "--save_dir", save_dir]
    runs = [subprocess.Popen(command + ["--num_neg", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for n in (2, 3)]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    assert sorted(code for code, _, _ in outcomes) == [0, 2], outcomes
    winner = next(i for i, (code, _, _) in enumerate(outcomes) if code == 0)
    loser_err = outcomes[1 - winner][2].strip().splitlines()
    assert len(loser_err) == 1 and ("in use" in loser_err[0] or "holds a finished earlier run" in loser_err[0])
    summary = results(save_dir)
    assert summary["config"]["num_neg"] == (2, 3)[winner] and [r["epoch"] for r in summary["history"]] == [1, 2, 3]
    for name in ("best.pt", "last.pt"):
        assert torch.load(os.path.join(save_dir, name), weights_only=True)["config"]["num_neg"] == (2, 3)[winner]


# --- item 4: bad input is one line, exit status 2, and leaves no run behind ---

@pytest.mark.parametrize("extra,env,expected", [
    (["--resume", "notes.txt"], {}, "notes.txt: not a readable checkpoint"),
    (["--resume", "."], {}, "a directory, not a checkpoint"),
    (["--save_dir", "afile"], {}, "afile is a file, not a directory"),
    (["--save_dir", "afile/run"], {}, "afile is a file, not a directory"),
    (["--num_neg", "10000000"], {}, "lower --num_neg"),
    (["--latent_dim_mf", "100000", "--num_layers", "10"], {}, "lower --latent_dim_mf or --num_layers"),
    (["--num_layers", "200"], {}, "no model of this size can be built"),
    (["--model", "mf", "--latent_dim_mf", "10000000000"], {}, "the mf model's 5,000,000,000,501 parameters"),
    (["--pretrain_gmf", "notes.txt", "--pretrain_mlp", "notes.txt"], {}, "notes.txt: not a readable checkpoint"),
    (["--dataset", "nope"], {}, "nope.train.rating"),
    ([], {"WANDB_MODE": "sometimes"}, "WANDB_MODE=sometimes"),
    (["--wandb", "auto"], {"WANDB_INIT_TIMEOUT": "soon"}, "WANDB_INIT_TIMEOUT=soon"),
])
def test_bad_input_gives_one_line_and_leaves_no_run(workdir, monkeypatch, capsys, extra, env, expected):
    data_dir, cwd = workdir
    (cwd / "notes.txt").write_text("not a checkpoint\n")
    (cwd / "afile").write_text("a file\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    flags = ["--data_dir", data_dir, *TINY] + (["--wandb", "disabled"] if not env else [])
    error = one_line_error(capsys, main_cli([*flags, *extra], monkeypatch))
    assert expected in error
    if "--num_neg" in extra or "--latent_dim_mf" in extra:
        assert "GB" in error or "TB" in error or "PB" in error or "can be built" in error  # how much it needs
    assert sorted(os.listdir(cwd)) == ["afile", "notes.txt"]  # no runs/ left behind


def test_pretrained_checkpoints_that_do_not_fit_give_one_line(workdir, monkeypatch, capsys):
    data_dir, cwd = workdir
    for kind in ("gmf", "mlp"):
        main.main(["--data_dir", data_dir, *TINY, "--epochs", "1", "--wandb", "disabled", "--model", kind,
                   "--save_dir", kind])
    other = cwd / "other"
    other.mkdir()
    write_split(other, users=50, items=80, per_user=10, negatives=20)
    for extra, expected in ((["--pretrain_gmf", "mlp/best.pt", "--pretrain_mlp", "gmf/best.pt"],
                             "--pretrain_gmf mlp/best.pt: a mlp checkpoint, not a gmf one"),
                            (["--pretrain_gmf", "gmf/best.pt", "--pretrain_mlp", "mlp/best.pt", "--num_layers", "2"],
                             "--pretrain_mlp mlp/best.pt: trained with --num_layers 3, not 2"),
                            (["--pretrain_gmf", "gmf/best.pt", "--pretrain_mlp", "mlp/best.pt", "--data_dir",
                              str(other)], "trained on 200 users x 300 items, not the 50 x 80")):
        error = one_line_error(capsys, main_cli(["--data_dir", data_dir, *TINY, "--wandb", "disabled", *extra],
                                                monkeypatch))
        assert expected in error
    assert sorted(os.listdir(cwd)) == ["gmf", "mlp", "other"]


def test_a_failed_run_leaves_latest_on_the_previous_run(workdir, monkeypatch, capsys):
    data_dir, cwd = workdir
    main.main(["--data_dir", data_dir, *TINY, "--wandb", "disabled"])
    previous = os.path.realpath("runs/tiny/latest")
    one_line_error(capsys, main_cli(["--data_dir", data_dir, *TINY, "--wandb", "disabled", "--num_neg", "10000000"],
                                    monkeypatch))
    assert os.path.realpath("runs/tiny/latest") == previous and len(os.listdir("runs/tiny")) == 2


def test_memory_estimate_names_the_flag_against_the_memory_available(workdir, monkeypatch, capsys):
    data_dir, _ = workdir
    monkeypatch.setattr(main, "available_memory", lambda device: 1 << 20)  # a 1 MB machine
    error = one_line_error(capsys, main_cli(["--data_dir", data_dir, *TINY, "--wandb", "disabled",
                                             "--num_neg", "50"], monkeypatch))
    assert "--num_neg 50" in error and "1.0 MB free on cpu" in error and "lower --num_neg" in error
    monkeypatch.setattr(main, "available_memory", lambda device: None)  # unknown: no check
    main.main(["--data_dir", data_dir, *TINY, "--wandb", "disabled", "--epochs", "1"])


def test_evaluate_refuses_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    for path, expected in ((text, "not a readable checkpoint"), (empty, "empty or cut short"),
                           (tmp_path, "a directory"), (other, "not a checkpoint written by main.py")):
        done = run_script("evaluate.py", "--checkpoint", str(path), "--gpu", "cpu")
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr and str(path) in done.stderr


# --- item 1 and 2: wandb's environment variables, no network, later failures ---

def test_wandb_environment_variables_are_honoured_and_flags_win(shared_split, tmp_path):
    """WANDB_PROJECT and WANDB_DIR as wandb reads them when its process starts (a process of its own); WANDB_MODE
    and the flags as main.py reads them (in this process)."""
    data_dir, _ = shared_split
    flags = ["--data_dir", data_dir, *TINY, "--epochs", "1"]
    disabled = run_here(*flags, "--save_dir", str(tmp_path / "off"), cwd=tmp_path, wandb_mode="disabled")
    assert disabled.returncode == 0, disabled.stderr
    assert not list(tmp_path.rglob("*.wandb")) and not (tmp_path / "off" / "wandb").exists()

    wandb_dir = tmp_path / "wandb_dir"
    env = {"WANDB_PROJECT": "from-env", "WANDB_DIR": str(wandb_dir)}
    done = run(*flags, "--save_dir", str(tmp_path / "env"), cwd=tmp_path, env=env, wandb_mode="offline")
    assert done.returncode == 0, done.stderr
    logged = read_run(wandb_dir)
    assert logged["run"]["project"] == "from-env" and not (tmp_path / "env" / "wandb").exists()
    assert logged["config"]["provenance"]["split_files"] == results(tmp_path / "env")["provenance"]["split_files"]

    done = run_here(*flags, "--save_dir", str(tmp_path / "flags"), "--wandb", "offline", "--wandb_project",
                    "from-flag", cwd=tmp_path, env={"WANDB_PROJECT": "from-env"}, wandb_mode="disabled")
    assert done.returncode == 0, done.stderr
    assert read_run(tmp_path / "flags")["run"]["project"] == "from-flag"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_falls_back_offline_and_online_explicitly_fails_in_one_line(shared_split, tmp_path):
    """An API key but no server (WANDB_BASE_URL on a closed port): auto logs offline after WANDB_INIT_TIMEOUT
    seconds with one notice; --wandb online stops before training with one line and exit status 2. In processes
    of their own: wandb reads WANDB_BASE_URL once a process."""
    data_dir, _ = shared_split
    env = {"WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
           "WANDB_INIT_TIMEOUT": "1"}
    started = time.perf_counter()
    done = run("--data_dir", data_dir, *TINY, "--epochs", "1", "--save_dir", str(tmp_path / "auto"), cwd=tmp_path,
               env=env)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 60
    notices = [line for line in done.stdout.splitlines() if "wandb" in line]
    assert len(notices) == 1 and "logging offline" in notices[0] and "wandb sync" in notices[0], done.stdout
    assert done.stderr.strip() == ""
    logged = read_run(tmp_path / "auto")  # kept for wandb sync
    assert [row["epoch"] for row in logged["history"] if "test/hr@10" in row] == [1]

    done = run("--data_dir", data_dir, *TINY, "--save_dir", str(tmp_path / "online"), "--wandb", "online",
               cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --wandb online") and "--wandb offline" in err[0]
    assert "epoch 1" not in done.stdout and not (tmp_path / "online").exists()


def test_a_wandb_failure_during_training_costs_the_logging_not_the_run(shared_split, tmp_path, monkeypatch, capsys):
    import wandb
    from wandb.sdk import wandb_run
    data_dir, _ = shared_split
    calls = []
    log = wandb_run.Run.log

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise wandb.errors.CommError("the server went away")
        return log(self, *args, **kwargs)

    monkeypatch.setattr(wandb_run.Run, "log", failing)
    save_dir = str(tmp_path / "run")
    main.main(["--data_dir", data_dir, *TINY, "--epochs", "3", "--log_every", "2", "--wandb", "offline",
               "--save_dir", save_dir])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and "warning: wandb failed (CommError: the server went away)" in warnings[0]
    assert len(calls) == 3  # nothing sent to wandb after the failure
    assert [r["epoch"] for r in results(save_dir)["history"]] == [1, 2, 3]
    assert captured.out.strip().splitlines()[-1].startswith("best epoch")


def test_safe_run_turns_each_wandb_failure_into_one_warning(capsys):
    class Broken:
        id = "abc"
        summary = {}

        def finish(self, **kwargs):
            raise RuntimeError("finish failed\nsecond line")

        def log_artifact(self, artifact):
            raise RuntimeError("upload failed")

    run = wandb_log.SafeRun(Broken())
    run.summary.update({"best": 1})
    run.finish(exit_code=1)
    run.log({"x": 1})
    run.log_model(__file__, "model", {})
    assert run.id == "abc"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: wandb failed (RuntimeError: finish failed); training continues without wandb"]


# --- item 5: provenance ---

def test_results_checkpoints_and_output_record_what_produced_them(shared_split, tmp_path):
    data_dir, _ = shared_split
    save_dir = str(tmp_path / "run")
    done = run_here("--data_dir", data_dir, *TINY, "--wandb", "disabled", "--save_dir", save_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = results(save_dir)["provenance"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip())
    assert record["git_commit"] == commit and record["git_dirty"] == dirty
    assert record["torch"] == str(torch.__version__) and record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"numpy", "cuda", "device", "device_name", "split_sha256"} <= record.keys() and record["device"] == "cpu"
    assert sorted(record["split_files"]) == ["tiny.test.negative", "tiny.test.rating", "tiny.train.rating"]
    for name in ("best.pt", "last.pt"):
        assert torch.load(os.path.join(save_dir, name), weights_only=True)["provenance"] == record
    printed = [line for line in done.stdout.splitlines() if line.startswith("code ")]
    assert len(printed) == 1 and commit[:10] in printed[0] and record["split_sha256"][:12] in printed[0]


def test_resume_on_changed_split_files_stops_naming_the_file(tmp_path):
    os.makedirs(tmp_path / "data")
    data_dir, _ = write_split(tmp_path / "data")
    save_dir = str(tmp_path / "run")
    done = run_here("--data_dir", data_dir, *TINY, "--wandb", "disabled", "--save_dir", save_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    write_split(tmp_path / "data", seed=1)  # same names, other content
    done = run_here("--resume", os.path.join(save_dir, "last.pt"), "--epochs", "3", cwd=tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and os.path.join(data_dir, "tiny.train.rating") in err[0] and "has changed" in err[0]
    assert [r["epoch"] for r in results(save_dir)["history"]] == [1, 2]
    scored = run_script("evaluate.py", "--checkpoint", os.path.join(save_dir, "best.pt"), "--gpu", "cpu")
    assert scored.returncode == 0 and scored.stderr.startswith("warning: ") and "tiny.train.rating" in scored.stderr
    write_split(tmp_path / "data")  # the original split back: resuming works again
    done = run_here("--resume", os.path.join(save_dir, "last.pt"), "--epochs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in results(save_dir)["history"]] == [1, 2, 3]
