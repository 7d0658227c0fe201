"""Run the seed's grid locally: num_neg 1,5,10 x latent_dim_mf 4,8,16 x num_layers 1,2,3, one main.py run a cell.

    python3 grid.py --quick                                  # smoke test on the built-in sample
    python3 grid.py --data_dir ../shared/data/ncf-ml-1m --dataset ml-1m --no-exclude_test_neg

The 27 cells run one after another in this process, each into OUT_DIR/negN_factorE_layersL (main.py's
results.json, checkpoints and report). Resumable: a cell whose results.json exists is skipped (an interrupted one
is computed again, with main.py's --overwrite). Then writes OUT_DIR/results.md, the seed README's three views of
the grid (by negatives, by factor, by layers), and OUT_DIR/results.csv, a row a cell (seconds: the cell's
training and evaluation time, from its results.json).
Any other main.py flag is passed to every cell. sweep.yaml runs the same grid as a wandb sweep.
"""
import contextlib
import csv
import io
import itertools
import json
import os
import shlex
import sys
import time

import dataloader
import main
from runs import changed_flags
from utils import Parser, atomic_open, check_output, fail, resolve_device, run_cli

GRID = {"num_neg": (1, 5, 10), "latent_dim_mf": (4, 8, 16), "num_layers": (1, 2, 3)}
QUICK_EPOCHS = 2
PER_CELL_FLAGS = (*GRID, "save_dir", "resume", "pretrain_gmf", "pretrain_mlp", "overwrite")  # set by the grid
# Flags a finished cell may have been run with differently and still count: where it ran and how it logged, its
# directory, and --pretrain (which main.py records as pretrain_gmf/pretrain_mlp).
NOT_COMPARED = ("gpu", "threads", "wandb", "wandb_project", "log_model", "save_dir", "pretrain", "pretrain_gmf",
                "pretrain_mlp", "overwrite")
VIEWS = (("negatives", "num_neg"), ("factor", "latent_dim_mf"), ("layers", "num_layers"))
CSV_FIELDS = (*GRID, "hr", "ndcg", "best_epoch", "seconds")


def parse_args(argv=None):
    """The grid's flags and the main.py flags passed through to every cell; main.py's parser checks them all."""
    defaults = main.parse_args([])
    p = Parser(description=__doc__.splitlines()[0],
               epilog="Any other main.py flag (e.g. --batch_size 256, --no-exclude_test_neg) is passed to every cell.")
    p.add_argument("--data_dir", default=defaults.data_dir, help="directory holding the split files")
    p.add_argument("--dataset", default=None,
                   help="split name (default: melon if DATA_DIR/melon.train.rating exists, else the built-in sample)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs a cell")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: at most {QUICK_EPOCHS} epochs a cell, to check the whole grid runs")
    p.add_argument("--out_dir", default=None, help="where the cells and tables go (default: runs/grid_DATASET)")
    p.add_argument("--gpu", default=defaults.gpu, help="CUDA index, or cpu")
    p.add_argument("--threads", default=defaults.threads, help="CPU threads")
    p.add_argument("--wandb", default="disabled",
                   help="auto, online, offline (a wandb run a cell) or disabled (the default)")
    args, passed = p.parse_known_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
    given = main.parse_args(common_flags(args) + passed)
    per_cell = [flag for flag in PER_CELL_FLAGS if getattr(given, flag) != getattr(defaults, flag)]
    if per_cell:
        p.error(f"--{per_cell[0]} is set by the grid for each cell")
    return args, passed


def common_flags(args):
    """main.py flags from the grid's own, the same for every cell."""
    flags = ["--data_dir", args.data_dir, "--epochs", str(args.epochs), "--gpu", args.gpu,
             "--threads", str(args.threads), "--wandb", args.wandb]
    return flags + (["--dataset", args.dataset] if args.dataset else [])


def finished(save_dir, cell_args):
    """A finished cell's results.json, or None; fails if the cell was run with other settings than `cell_args`."""
    path = os.path.join(save_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    config = results["config"]
    stale = changed_flags(config, cell_args, NOT_COMPARED)
    if stale:
        fail(f"{path}: finished with --{stale[0]} {config[stale[0]]}, not {getattr(cell_args, stale[0])}: "
             f"use another --out_dir, or delete it to recompute that cell")
    return results


def run_cell(argv):
    """main.py on the command line `argv`, in this process (no start-up cost a cell); its printed output is dropped
    (results.json and results.md keep it), and its errors end the grid as they would end main.py."""
    with contextlib.redirect_stdout(io.StringIO()):
        main.main(argv)


def write_tables(out_dir, rows, header, k):
    """results.md (the three views, each one table sorted by its axis, then the others) and results.csv."""
    lines = header
    for title, axis in VIEWS:
        lines += ["", f"## By {title}", "", f"| HR@{k} | NDCG@{k} | num_neg | latent_dim_mf | num_layers |",
                  "|---|---|---|---|---|"]
        for row in sorted(rows, key=lambda r: (r[axis], *(r[a] for a in GRID))):
            lines.append(f"| {row['hr']:.4f} | {row['ndcg']:.4f} | {row['num_neg']} | {row['latent_dim_mf']} "
                         f"| {row['num_layers']} |")
    with atomic_open(os.path.join(out_dir, "results.md")) as f:
        f.write("\n".join(lines) + "\n")
    with atomic_open(os.path.join(out_dir, "results.csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run_grid():
    args, passed = parse_args()
    args.dataset = args.dataset or dataloader.default_dataset(args.data_dir)
    out_dir = args.out_dir or os.path.join("runs", f"grid_{args.dataset}")
    resolve_device(args.gpu)  # a bad --gpu fails here, once, rather than in the first cell
    for table in ("results.md", "results.csv"):  # and --out_dir before any cell trains
        check_output(os.path.join(out_dir, table), "--out_dir")
    cells = list(itertools.product(*GRID.values()))
    rows = []
    for i, cell in enumerate(cells, 1):
        values = dict(zip(GRID, cell))
        save_dir = os.path.join(out_dir, "neg{num_neg}_factor{latent_dim_mf}_layers{num_layers}".format(**values))
        argv = common_flags(args) + passed + [f for name, value in values.items() for f in (f"--{name}", str(value))]
        argv += ["--save_dir", save_dir, "--overwrite"]  # a cell without results.json is computed again
        cell_args = main.parse_args(argv)
        k = cell_args.topk
        results = finished(save_dir, cell_args)
        print(f"cell {i}/{len(cells)} " + " ".join(f"{name} {value}" for name, value in values.items()) + ": ",
              end="", flush=True)
        started = time.perf_counter()
        if results is None:
            run_cell(argv)
            results = finished(save_dir, cell_args)
            done = f"{time.perf_counter() - started:.1f} s"
        else:
            done = "skipped (finished before)"
        print(f"HR@{k} {results['hr']:.4f} NDCG@{k} {results['ndcg']:.4f} (best epoch {results['best_epoch']}), "
              f"{done}")
        seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in results["history"])
        rows.append(dict(values, hr=results["hr"], ndcg=results["ndcg"], best_epoch=results["best_epoch"],
                         seconds=round(seconds, 4)))

    best = max(rows, key=lambda r: r["ndcg"])
    header = [f"# The seed's grid on {args.dataset}", "",
              f"`python3 grid.py {shlex.join(sys.argv[1:])}`: {results['config']['model']}, {args.epochs} epochs "
              f"a cell, best epoch chosen on {results['selection']} NDCG@{k}, {results['protocol']} evaluation. "
              f"Best cell: HR@{k} {best['hr']:.4f}, NDCG@{k} {best['ndcg']:.4f} (num_neg {best['num_neg']}, "
              f"latent_dim_mf {best['latent_dim_mf']}, num_layers {best['num_layers']})."]
    write_tables(out_dir, rows, header, k)
    print(f"wrote {os.path.join(out_dir, 'results.md')} and {os.path.join(out_dir, 'results.csv')}")


if __name__ == "__main__":
    run_cli(run_grid)
