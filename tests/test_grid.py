import csv
import itertools
import json
import os
import sys

import pytest

import grid
import main
from conftest import REPO, run_script, write_split
from utils import run_cli

CELLS = list(itertools.product(*grid.GRID.values()))
COLUMNS = "| HR@10 | NDCG@10 | num_neg | latent_dim_mf | num_layers |"
PASSED = ["--batch_size", "512", "--no-exclude_test_neg"]  # main.py flags grid.py passes through to every cell


def run(command, *args, check=True):
    """`python3 COMMAND ARGS`, run in this process."""
    result = run_script(command, *args, env={"WANDB_MODE": "disabled"})
    if check:
        assert result.returncode == 0, result.stderr
    return result


def cell_dir(out_dir, num_neg, factor, layers):
    return os.path.join(out_dir, f"neg{num_neg}_factor{factor}_layers{layers}")


def cell_results(out_dir, *cell):
    with open(os.path.join(cell_dir(out_dir, *cell), "results.json")) as f:
        return json.load(f)


def mtimes(out_dir):
    return {cell: os.stat(os.path.join(cell_dir(out_dir, *cell), name)).st_mtime_ns
            for cell in CELLS for name in ("results.json", "best.pt")}


def cell_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("cell ")]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The whole grid in quick mode on a tiny split: (grid.py's arguments, OUT_DIR, its stdout)."""
    tmp = tmp_path_factory.mktemp("grid")
    data_dir, name = write_split(tmp, users=60, items=80, clusters=4)
    args = ["--data_dir", data_dir, "--dataset", name, "--quick", "--gpu", "cpu", "--out_dir", str(tmp / "out"),
            *PASSED]
    return args, str(tmp / "out"), run("grid.py", *args).stdout


def test_sweep_yaml_is_the_seed_grid_over_main_flags():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(REPO, "sweep.yaml")) as f:
        sweep = yaml.safe_load(f)
    assert (sweep["program"], sweep["method"], sweep["project"]) == ("main.py", "grid", "recommendation")
    assert sweep["metric"] == {"name": "best/ndcg@10", "goal": "maximize"}
    assert sweep["command"] == ["${env}", "python3", "${program}", "${args}"]
    parameters = {name: tuple(spec["values"]) for name, spec in sweep["parameters"].items()}
    assert parameters == grid.GRID and len(list(itertools.product(*parameters.values()))) == 27
    defaults = main.parse_args([])
    assert all(hasattr(defaults, name) for name in parameters)
    # the agent runs `python3 main.py --num_neg=1 --latent_dim_mf=4 --num_layers=1`
    args = main.parse_args([f"--{name}={values[0]}" for name, values in parameters.items()])
    assert [getattr(args, name) for name in parameters] == [values[0] for values in parameters.values()]


def test_grid_writes_the_seed_tables_and_a_csv(grid_run):
    _, out_dir, stdout = grid_run
    lines = cell_lines(stdout)
    assert [line.split(":")[0] for line in lines] == [
        f"cell {i}/27 num_neg {n} latent_dim_mf {e} num_layers {layers}" for i, (n, e, layers) in enumerate(CELLS, 1)]
    assert not any("skipped" in line for line in lines)
    results = {cell: cell_results(out_dir, *cell) for cell in CELLS}
    for (num_neg, factor, layers), r in results.items():
        config = r["config"]
        assert (config["num_neg"], config["latent_dim_mf"], config["num_layers"]) == (num_neg, factor, layers)
        assert (config["epochs"], config["batch_size"], config["exclude_test_neg"]) == (2, 512, False)
        assert len(r["history"]) == 2

    with open(os.path.join(out_dir, "results.md")) as f:
        report = f.read().splitlines()
    tables = [list(group) for is_table, group in itertools.groupby(report, lambda line: line.startswith("|"))
              if is_table]
    assert len(tables) == 3
    for table, axis in zip(tables, range(3)):
        assert table[0] == COLUMNS and table[1] == "|---|---|---|---|---|"
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
        cells = [tuple(int(x) for x in row[2:]) for row in rows]
        assert sorted(cells) == CELLS
        assert cells == sorted(CELLS, key=lambda c: (c[axis], *c))  # grouped by this view's axis
        for row, cell in zip(rows, cells):
            assert row[:2] == [f"{results[cell]['hr']:.4f}", f"{results[cell]['ndcg']:.4f}"]

    with open(os.path.join(out_dir, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 27 and list(rows[0]) == ["num_neg", "latent_dim_mf", "num_layers", "hr", "ndcg",
                                                  "best_epoch", "seconds"]
    for row, cell in zip(rows, CELLS):
        r = results[cell]
        assert (int(row["num_neg"]), int(row["latent_dim_mf"]), int(row["num_layers"])) == cell
        assert (float(row["hr"]), float(row["ndcg"]), int(row["best_epoch"])) == (r["hr"], r["ndcg"], r["best_epoch"])
        assert float(row["seconds"]) > 0


def test_a_grid_cell_is_main_py_run_alone(grid_run):
    args, out_dir, _ = grid_run
    cell = (10, 16, 3)  # the last cell, after 26 others in the same process
    alone = os.path.join(os.path.dirname(out_dir), "alone")
    run("main.py", *args[:4], "--epochs", "2", "--gpu", "cpu", "--wandb", "disabled", *PASSED,
        "--num_neg", "10", "--latent_dim_mf", "16", "--num_layers", "3", "--save_dir", alone)
    with open(os.path.join(alone, "results.json")) as f:
        expected = json.load(f)
    got = cell_results(out_dir, *cell)
    assert [(r["loss"], r["hr"], r["ndcg"]) for r in got["history"]] == \
        [(r["loss"], r["hr"], r["ndcg"]) for r in expected["history"]]


def test_grid_resumes_without_recomputing_finished_cells(grid_run):
    args, out_dir, _ = grid_run
    before = mtimes(out_dir)
    with open(os.path.join(out_dir, "results.md")) as f:
        report = f.read()
    lines = cell_lines(run("grid.py", *args).stdout)
    assert len(lines) == 27 and all(line.endswith("skipped (finished before)") for line in lines)
    assert mtimes(out_dir) == before
    with open(os.path.join(out_dir, "results.md")) as f:
        assert f.read() == report

    cell = (5, 8, 2)
    metrics = cell_results(out_dir, *cell)["history"]
    os.remove(os.path.join(cell_dir(out_dir, *cell), "results.json"))
    lines = cell_lines(run("grid.py", *args).stdout)
    recomputed = [line for line in lines if not line.endswith("skipped (finished before)")]
    assert len(recomputed) == 1 and recomputed[0].startswith("cell 14/27 num_neg 5 latent_dim_mf 8 num_layers 2:")
    after = mtimes(out_dir)
    assert {c for c in CELLS if after[c] != before[c]} == {cell}
    assert [r["ndcg"] for r in cell_results(out_dir, *cell)["history"]] == [r["ndcg"] for r in metrics]

    # cells finished with other settings are neither skipped nor overwritten: the run stops before the first
    other = run("grid.py", *[a for a in args if a != "--quick"], "--epochs", "3", check=False)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "--epochs 2, not 3" in other.stderr and "Traceback" not in other.stderr
    assert mtimes(out_dir) == after


@pytest.mark.parametrize("flags,named", [(["--bogus"], "--bogus"), (["--num_neg", "3"], "--num_neg"),
                                         (["--latent_dim=3"], "--latent_dim_mf"), (["--save_dir", "x"], "--save_dir"),
                                         (["--epochs", "0"], "--epochs"), (["--lr", "0"], "--lr"),
                                         (["--gpu", "x1"], "--gpu"), (["--wandb", "x"], "--wandb"),
                                         (["--threads", "two"], "--threads")])
def test_bad_flags_give_one_line_and_status_2(tmp_path, monkeypatch, capsys, flags, named):
    data_dir, name = write_split(tmp_path, users=60, items=80, clusters=4)
    out_dir = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["grid.py", "--data_dir", data_dir, "--dataset", name, "--quick",
                                      "--out_dir", str(out_dir), *flags])
    with pytest.raises(SystemExit) as exit_:
        run_cli(grid.run_grid)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err
    assert not out_dir.exists()
