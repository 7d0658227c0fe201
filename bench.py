"""Benchmark the pipeline main.py runs: split time, negative sampling, training samples/s over a full epoch,
sampled and full-ranking evaluation time, and peak memory. By default on a Melon-scale synthetic split
(115,071 playlists, built on first use under data/bench), with the seed's settings.

    python3 bench.py                                         # CPU, batch 1024, 4 negatives, the seed's model
    python3 bench.py --batch_size 16384 --lr 0.01 --num_neg 8 --no-sparse --threads 2    # large batch
    python3 bench.py --data_dir ../shared/data/ncf-ml-1m --dataset ml-1m --per_sample_steps 1000   # and a
                                                            # per-sample DataLoader pipeline for comparison
    python3 bench.py --gpu 0 --amp --batch_size 1048576 --json bench.json
    python3 bench.py --continuation runs/melon_arena/best.pt    # playlist continuation with a trained checkpoint:
                                        # evaluate.py --continue's wall time and peak memory, --playlist's latency
    python3 bench.py --data_dir DIR --dataset NAME --startup 5   # and main.py's start-up overhead, best of 5

Every main.py flag (--gpu, --batch_size, --latent_dim_mf, --num_layers, --num_neg, --sparse, --threads, --amp,
...) configures the run; the figures time main.py's own functions.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

import continuation
import dataloader
import distributed
import main
import split
import synthetic
from arena import read_questions
from model import ModelConfig, build_model, scorer_agrees
from optim import fused_step_agrees
from runs import load_checkpoint, model_from_checkpoint, split_of
from scoring import full_ranks, sampled_ranks
from training import Position, epoch_size, make_step, train_epoch, uses_sparse_updates
from utils import InputError, Parser, atomic_open, check_output, cpu_name, run_cli


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is in KiB on Linux


def timed(device, work):
    """(result, seconds) of work(), waiting for the device to finish."""
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def per_sample_pipeline(data, args, steps):
    """Training samples/s of the pipeline most public NCF code uses, timed over `steps` batches: a Dataset that
    returns one (user, item, label) sample at a time, a shuffling DataLoader collating them into batches, the
    same model through autograd and torch.optim.Adam. Its samples come from this repository's sampler, drawn
    before the clock starts (public code draws them in Python loops), so the figure flatters it."""
    users, items, labels = (t.cpu() for t in dataloader.epoch_samples(data, args.num_neg, args.seed, 1))

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(users)

        def __getitem__(self, i):
            return users[i], items[i], labels[i]

    model = build_model(ModelConfig.of(args), data.num_users, data.num_items).to(data.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(Samples(), batch_size=args.batch_size, shuffle=True)
    started, done = time.perf_counter(), 0
    for step, (u, i, y) in enumerate(loader):
        if step == steps:
            break
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(u.to(data.device), i.to(data.device)),
                                                                    y.to(data.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += len(y)
    loss.item()
    return done / (time.perf_counter() - started)


def continuation_figures(checkpoint_path, questions, threads):
    """Playlist continuation with a trained checkpoint on its split's Arena questions (or `questions`):
    evaluate.py --continue as a child process (wall time, peak resident memory, its own timings line, the score
    with the split's answers), and in this process the time to answer one playlist, known and new, once loaded."""
    checkpoint = load_checkpoint(checkpoint_path)
    data_dir, dataset = split_of(checkpoint, checkpoint_path)
    data = dataloader.load(data_dir, dataset)
    arena = data.meta.get("arena", {})
    questions = questions or arena.get("questions")
    if questions is None:
        raise InputError(f"--continuation: split {dataset!r} has no Arena questions: give --questions")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "evaluate.py", "--checkpoint", checkpoint_path, "--gpu", "cpu", "--continue",
                   questions, "--out", os.path.join(tmp, "results.json")]
        if questions == arena.get("questions"):
            command += ["--answers", arena["answers"]]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        figures["continue_wall_seconds"] = time.perf_counter() - started
        if done.returncode:
            raise InputError(f"evaluate.py --continue failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    figures["continue_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    lines = done.stdout.strip().splitlines()
    print("\n".join(lines[-2:]))

    torch.set_num_threads(threads)
    model = model_from_checkpoint(checkpoint, data, checkpoint_path)
    model.eval()
    answering = continuation.for_model(model, data, data_dir)
    playlists = read_questions(questions)
    asked = next(p for p in playlists if p["songs"])
    known = {"id": data.meta["user_ids"][0], "songs": [], "tags": [], "plylst_title": ""}
    new = dict(asked, id=-1)
    answering.answer([dict(asked, id=-2)], k_songs=10)  # the first answer also initialises torch's kernels
    for name, playlist in (("playlist_known_seconds", known), ("playlist_new_seconds", new)):
        started = time.perf_counter()
        answering.answer([playlist], k_songs=10)
        figures[name] = time.perf_counter() - started
    return {"questions": len(playlists), "songs": data.num_items, "playlists": data.num_users}, figures


def startup_seconds(main_argv, runs):
    """main.py's start-up overhead: the wall time of `python3 main.py MAIN_ARGV --epochs 1` minus the training and
    evaluation seconds its results.json records, minus the wall time of `python3 -c "import torch"`, each the
    best of `runs` processes: (start-up seconds, import torch seconds)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def wall(command):
        started = time.perf_counter()
        subprocess.run([sys.executable, *command], cwd=here, check=True, capture_output=True)
        return time.perf_counter() - started

    overheads, imports = [], []
    with tempfile.TemporaryDirectory() as runs_dir:
        for run in range(runs):
            save_dir = os.path.join(runs_dir, str(run))
            seconds = wall(["main.py", *main_argv, "--epochs", "1", "--save_dir", save_dir])
            with open(os.path.join(save_dir, "results.json")) as f:
                epoch = json.load(f)["history"][0]
            overheads.append(seconds - epoch["train_seconds"] - epoch["eval_seconds"])
            imports.append(wall(["-c", "import torch"]))
    return min(overheads) - min(imports), min(imports)


def parse_flags():
    """(bench.py's own flags, main.py's arguments). --help shows bench.py's flags, then main.py's."""
    parser = Parser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show bench.py's flags, then main.py's, and exit")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--full_users", type=int, default=1000,
                        help="users to time full-ranking evaluation on (the total is extrapolated)")
    parser.add_argument("--per_sample_steps", type=int, default=0,
                        help="also time this many batches of a per-sample DataLoader pipeline, for comparison")
    parser.add_argument("--continuation", metavar="CHECKPOINT",
                        help="instead: time playlist continuation with this checkpoint (evaluate.py --continue on "
                             "its split's Arena questions, --playlist for one playlist)")
    parser.add_argument("--questions", help="with --continuation: this question file instead of the split's")
    parser.add_argument("--startup", type=int, default=0,
                        help="also measure main.py's start-up overhead (the process minus its training, evaluation "
                             "and `import torch`), the best of this many runs of --epochs 1")
    own, rest = parser.parse_known_args()
    if own.help:
        main_parser = main.build_parser()
        main_parser.prog = "main.py"
        print(parser.format_help() + "\nEvery other flag goes to main.py, whose own help follows.\n\n"
              + main_parser.format_help(), end="")
        sys.exit(0)
    for flag in ("full_users", "per_sample_steps", "startup"):
        if getattr(own, flag) < 0:
            parser.error(f"--{flag} must not be negative, got {getattr(own, flag)}")
    if own.json:
        own.json = check_output(own.json, "--json", [("--continuation", own.continuation),
                                                     ("--questions", own.questions)])
    return own, rest


def check_figures(model, args, sparse, device):
    """Seconds the start of a run spends checking its fast paths against the model's forward: the fused step's
    check (make_step) and the scorer's (scoring.py, once per model)."""
    betas = (args.beta1, args.beta2)
    _, fused = timed(device, lambda: fused_step_agrees(model, args.optim, args.lr, betas, args.l2, sparse))
    _, scorer = timed(device, lambda: scorer_agrees(model))
    return {"fused_step_check_seconds": fused, "scorer_check_seconds": scorer}


def evaluation_figures(model, data, device, full_users):
    """Seconds to rank every test user's held-out item among its sampled candidates, and with `full_users` among
    every item for that many users (per 1,000, and extrapolated to all)."""
    figures = {}
    _, figures["sampled_eval_seconds"] = timed(device, lambda: sampled_ranks(model, data.test))
    if full_users:
        users = min(full_users, len(data.test.users))
        subset = dataloader.Candidates(data.test.users[:users], data.test.items[:users])
        _, seconds = timed(device, lambda: full_ranks(model, data, subset))
        figures["full_eval_seconds_per_1000_users"] = seconds / users * 1000
        figures["full_eval_seconds_all_users_extrapolated"] = seconds / users * len(data.test.users)
    return figures


def report_continuation(own, rest):
    """bench.py --continuation: print (and with --json write) continuation_figures."""
    threads = main.parse_args(rest).threads
    setup, figures = continuation_figures(own.continuation, own.questions, threads)
    print(f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, {threads} thread(s); "
          + ", ".join(f"{k} {v:,}" for k, v in setup.items()))
    for name, value in figures.items():
        print(f"  {name:<24}  {value:>10,.2f}")
    if own.json:
        with atomic_open(own.json) as f:
            json.dump({"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__},
                       "threads": threads, "data": setup, "figures": figures}, f, indent=1)


def bench():
    own, rest = parse_flags()
    if own.continuation:
        return report_continuation(own, rest)
    defaults = ["--data_dir", "data/bench", "--dataset", "melon_syn", "--wandb", "disabled"]
    args = main.parse_args(defaults + rest)
    ctx = distributed.setup(args.gpu)  # one process: bench.py is not started by torchrun
    device = ctx.device
    torch.set_num_threads(args.threads)
    figures = {}

    if args.dataset == "melon_syn" and not os.path.exists(os.path.join(args.data_dir, "melon_syn.train.rating")):
        train_json, _ = synthetic.generate(os.path.join(args.data_dir, "melon_syn"), scale="melon")
        _, figures["split_seconds"] = timed(device, lambda: split.split(train_json, args.data_dir, "melon_syn"))

    data, figures["load_seconds"] = timed(
        device, lambda: dataloader.load(args.data_dir, args.dataset, device, args.exclude_test_neg))
    torch.manual_seed(args.seed)
    sparse = uses_sparse_updates(args, device)
    model = build_model(ModelConfig.of(args), data.num_users, data.num_items, sparse).to(device)
    figures.update(check_figures(model, args, sparse, device))
    train_step = make_step(model, args, sparse, ctx)
    samples = epoch_size(data, args)

    _, figures["sampling_seconds"] = timed(device, lambda: dataloader.epoch_samples(data, args.num_neg, args.seed, 0))
    position = Position()  # the start of epoch 1
    _, figures["epoch_seconds"] = timed(device, lambda: train_epoch(train_step, data, args, ctx, position))
    figures["samples_per_second"] = samples / figures["epoch_seconds"]
    figures["training_samples_per_second"] = samples / (figures["epoch_seconds"] - figures["sampling_seconds"])
    figures["peak_rss_gib_after_training"] = peak_rss_gib()

    figures.update(evaluation_figures(model, data, device, own.full_users))
    if own.per_sample_steps:
        figures["per_sample_pipeline_samples_per_second"] = per_sample_pipeline(data, args, own.per_sample_steps)
    figures["peak_rss_gib"] = peak_rss_gib()
    if own.startup:
        figures["startup_seconds"], figures["import_torch_seconds"] = startup_seconds(defaults + rest, own.startup)
    if device.type == "cuda":
        figures["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()}
    setup = {"dataset": args.dataset, "users": data.num_users, "items": data.num_items,
             "training_pairs": len(data.train_users), "samples_per_epoch": samples,
             "steps_per_epoch": position.step, "epoch_loss": position.loss_sum / samples}
    config = {k: getattr(args, k) for k in ("model", "batch_size", "latent_dim_mf", "num_layers", "num_neg", "lr",
                                            "beta1", "beta2", "optim", "amp", "threads", "exclude_test_neg")}
    config.update(sparse=sparse, step=type(train_step).__name__)
    report(machine, config, setup, figures, own.json)


def report(machine, config, setup, figures, json_path=None):
    """Print the benchmark's machine, configuration, data and figures (and write them to `json_path`)."""
    print(f"{machine['device_name']} ({machine['cores']} cores), torch {machine['torch']}, device {machine['device']}")
    print(", ".join(f"{k} {v}" for k, v in config.items()))
    print(", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in setup.items()))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value:>14,.2f}")
    if json_path:
        with atomic_open(json_path) as f:
            json.dump({"machine": machine, "config": config, "data": setup, "figures": figures}, f, indent=1)


if __name__ == "__main__":
    run_cli(bench)
