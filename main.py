"""Train GMF, MLP or NeuMF on a leave-one-out split and evaluate HR@K / NDCG@K every epoch.

    python3 main.py                      # the Melon split in data/ if present, else the built-in synthetic sample
    python3 main.py --data_dir ../shared/data/ncf-ml-1m --dataset ml-1m

Writes SAVE_DIR/results.json, best.pt and last.pt (SAVE_DIR: a new runs/DATASET/YYYYMMDD-HHMMSS for every run
unless --save_dir is given; runs/DATASET/latest points to the newest), logs to Weights & Biases, and prints as its
last line `best epoch N: HR@10 h NDCG@10 n`.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dataloader
import distributed
from evaluate import (full_ranks, item_names, load_checkpoint, load_pretrained_checkpoints, recommend, sampled_ranks,
                      split_changes)
from metrics import hit_ratio_from_ranks, ndcg_from_ranks
from model import MODELS, build_model, load_pretrained
from optim import FUSED_OPTIMIZERS, AutogradStep, FusedStep, LazyAdam
from split import fingerprint
from utils import (InputError, Parser, atomic_open, atomic_path, available_memory, code_provenance, gpu_indices,
                   human_bytes, lock_directory, point_symlink)

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
              "rmsprop": torch.optim.RMSprop}
SPARSE_OPTIMIZERS = {"adam": LazyAdam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
SHOWN_PLAYLISTS = 3  # playlists whose top-K recommendations are logged at every evaluation
RESUMABLE_FLAGS = ("epochs", "gpu", "threads", "wandb", "log_model", "patience", "resume",
                   "overwrite")  # may differ from the checkpoint's on --resume
RUN_FILES = ("results.json", "last.pt", "best.pt")  # a run's outputs, which no other run may replace
WANDB_PROJECT = "recommendation"
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
AUTO_INIT_TIMEOUT = 15.0  # seconds --wandb auto waits for the wandb server before logging offline
SAMPLE_BYTES = 48  # memory per training sample of an epoch: user, item, label, shuffled and copied


def build_parser():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data", help="directory holding the split files")
    p.add_argument("--dataset", default=None,
                   help="split name (default: melon if DATA_DIR/melon.train.rating exists, else the built-in sample)")
    p.add_argument("--model", choices=MODELS, default="neumf")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--latent_dim_mf", type=int, default=8, help="predictive factor E (GMF size, last MLP layer)")
    p.add_argument("--num_layers", type=int, default=3, help="MLP layers L (embeddings E*2^(L-1) per side)")
    p.add_argument("--num_neg", type=int, default=4, help="training negatives per positive, redrawn every epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l2", type=float, default=0.0, help="weight decay")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam's beta1")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's beta2")
    p.add_argument("--optim", choices=OPTIMIZERS, default="adam")
    p.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=None,
                   help="update only the embedding rows in each batch (lazy Adam; with --l2 0 and adam, sgd or "
                        "adagrad); --no-sparse: the seed's dense update of every row at every step (default: "
                        "sparse on the CPU, dense on CUDA, where it is faster)")
    p.add_argument("--gpu", default="0", help="CUDA index, or a list like 2,3 (one process per GPU), or cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--topk", type=int, default=10, help="K of HR@K and NDCG@K")
    p.add_argument("--eval", choices=["sampled", "full"], default="sampled",
                   help="sampled: held-out item among its 99 negatives; full: among all items unseen in training")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better NDCG (0: never stop early)")
    p.add_argument("--exclude_test_neg", action=argparse.BooleanOptionalAction, default=True,
                   help="training negatives avoid the user's test negatives, as the seed did "
                        "(--no-exclude_test_neg: the NCF paper's protocol)")
    p.add_argument("--pretrain", action="store_true",
                   help="train GMF, then MLP, then NeuMF initialised from both (SAVE_DIR/gmf, SAVE_DIR/mlp, SAVE_DIR)")
    p.add_argument("--pretrain_gmf", default=None, help="GMF checkpoint to initialise NeuMF from")
    p.add_argument("--pretrain_mlp", default=None, help="MLP checkpoint to initialise NeuMF from")
    p.add_argument("--pretrain_epochs", type=int, default=None, help="epochs of --pretrain's GMF and MLP stages "
                   "(default: --epochs)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="NeuMF from pretrained GMF and MLP: the output layer is [alpha * GMF's, (1 - alpha) * MLP's]")
    p.add_argument("--finetune_optim", choices=OPTIMIZERS, default=None,
                   help="optimizer of NeuMF initialised from pretrained GMF and MLP (default: --optim; the NCF "
                        "paper: sgd)")
    p.add_argument("--finetune_lr", type=float, default=None, help="its learning rate (default: --lr)")
    p.add_argument("--save_dir", default=None, help="where results.json and checkpoints go (default: a new "
                   "runs/DATASET/YYYYMMDD-HHMMSS, with runs/DATASET/latest pointing to it; "
                   "runs/DATASET/sweep-ID/RUN_ID under a wandb sweep agent); one that holds an earlier run is "
                   "refused without --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="let --save_dir replace the earlier run it holds (its results and checkpoints are deleted)")
    p.add_argument("--resume", default=None, help="last.pt to continue from (its configuration is used)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default=None,
                   help="auto: online when wandb credentials exist, offline otherwise (and offline after "
                        "WANDB_INIT_TIMEOUT seconds, default 15, without the server); default: $WANDB_MODE, else auto")
    p.add_argument("--wandb_project", default=None, help=f"default: $WANDB_PROJECT, else {WANDB_PROJECT}")
    p.add_argument("--log_model", action="store_true", help="upload best.pt to wandb as a model artifact")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (for GPUs)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (one is fastest for small batches, and robust on a busy machine)")
    p.add_argument("--log_every", type=int, default=10, help="log the training loss every this many steps")
    return p


def given_flags(argv=None):
    """The flags (as argument names) present on the command line, whatever their values."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "latent_dim_mf", "num_layers", "num_neg", "topk", "threads", "log_every"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("patience", "l2"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag} must not be negative, got {getattr(args, flag)}")
    for flag in ("lr", "finetune_lr"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):
            p.error(f"--{flag} must be a positive number, got {value}")
    if args.pretrain_epochs is not None and args.pretrain_epochs < 1:
        p.error(f"--pretrain_epochs must be at least 1, got {args.pretrain_epochs}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.pretrain_epochs is not None and not args.pretrain:
        p.error("--pretrain_epochs needs --pretrain")
    for flag in ("finetune_optim", "finetune_lr"):
        if getattr(args, flag) is not None and not (args.pretrain or args.pretrain_gmf):
            p.error(f"--{flag} needs --pretrain or --pretrain_gmf/--pretrain_mlp")
    for flag in ("beta1", "beta2"):
        if not 0 <= getattr(args, flag) < 1:
            p.error(f"--{flag} must be in [0, 1), got {getattr(args, flag)}")
    if (args.pretrain_gmf or args.pretrain_mlp) and (args.model != "neumf" or not (args.pretrain_gmf and args.pretrain_mlp)):
        p.error("--pretrain_gmf and --pretrain_mlp go together, with --model neumf")
    if args.pretrain and (args.model != "neumf" or args.pretrain_gmf or args.resume):
        p.error("--pretrain trains NeuMF from scratch: not with --model gmf/mlp/mf, --pretrain_gmf or --resume")
    return args


def default_dataset(data_dir):
    """melon when its split exists; otherwise the built-in synthetic sample, generated and split on first use."""
    if os.path.exists(os.path.join(data_dir, "melon.train.rating")):
        return "melon"
    if not os.path.exists(os.path.join(data_dir, "sample.train.rating")):
        import split
        import synthetic
        train_json, _ = synthetic.generate(os.path.join(data_dir, "sample"))
        split.split(train_json, data_dir, "sample")
    print(f"no Melon split at {os.path.join(data_dir, 'melon.train.rating')}: "
          f"training on the built-in synthetic sample ({os.path.join(data_dir, 'sample')}.*)")
    return "sample"


def wandb_credentials_present():
    """Whether wandb can log in without prompting (API key in the environment, netrc or wandb's settings),
    by wandb's own lookup; reads files only, no network. A malformed key counts as present, so an online
    run fails loudly instead of silently going offline."""
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth
    try:
        return wbauth.authenticate_session(host=wandb_setup.singleton().settings.base_url, source="--wandb auto",
                                           prompt=False, verify=False, update_session=False) is not None
    except AuthenticationError:
        return True
    except ValueError:
        return False


def wandb_mode(args):
    """(mode asked for, how it was asked): --wandb when given, else $WANDB_MODE, else disabled when
    $WANDB_DISABLED is true, else auto."""
    if args.wandb is not None:
        return args.wandb, f"--wandb {args.wandb}"
    value = os.environ.get("WANDB_MODE", "").strip()
    if value:
        if value.lower() not in WANDB_MODES:
            raise InputError(f"WANDB_MODE={value}: expected online, offline or disabled")
        return WANDB_MODES[value.lower()], f"WANDB_MODE={value}"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled", "WANDB_DISABLED"
    return "auto", "--wandb auto"


def wandb_init_timeout(default):
    """Seconds wandb.init may wait for the server: $WANDB_INIT_TIMEOUT when set, else `default`."""
    value = os.environ.get("WANDB_INIT_TIMEOUT")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or not math.isfinite(seconds):
        raise InputError(f"WANDB_INIT_TIMEOUT={value}: expected a positive number of seconds")
    return seconds


def one_line(error):
    """The first line of an exception's message (its type name when it has none), at most 160 characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def start_wandb(args, data, run_id, provenance=None):
    """A wandb run (a SafeRun), or None when disabled. The mode is --wandb, else $WANDB_MODE, else auto: online
    with credentials, offline otherwise; and offline, with a notice, when the server cannot be reached within
    WANDB_INIT_TIMEOUT seconds. Asked for online explicitly, that failure is a one-line error instead. The project
    and directory honour $WANDB_PROJECT and $WANDB_DIR unless --wandb_project is given."""
    requested, asked = wandb_mode(args)
    if requested == "disabled":
        return None
    timeout = wandb_init_timeout(AUTO_INIT_TIMEOUT if requested == "auto" else None)
    import wandb
    wandb.setup(settings=wandb.Settings(silent=True))  # no login banner or warnings of its own: one-line errors
    mode = requested if requested != "auto" else ("online" if wandb_credentials_present() else "offline")
    config = dict(vars(args), num_users=data.num_users, num_items=data.num_items,
                  num_train=len(data.train_users), num_test=len(data.test.users), provenance=provenance)
    kwargs = dict(project=args.wandb_project or os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, config=config,
                  id=run_id, resume="allow" if run_id else None)
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = args.save_dir
    settings = dict(silent=True, **({"init_timeout": timeout} if timeout else {}))
    runs_dir = os.path.join(os.environ.get("WANDB_DIR") or args.save_dir, "wandb")
    before = set(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else set()
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
    except Exception as e:  # CommError, UsageError, AuthenticationError, timeouts: whatever keeps wandb from starting
        for name in set(os.listdir(runs_dir) if os.path.isdir(runs_dir) else ()) - before:
            if name.startswith("run-"):  # the online attempt's files: nothing to sync
                shutil.rmtree(os.path.join(runs_dir, name), ignore_errors=True)
        if mode == "offline" or requested == "online":
            advice = "; check the network and the API key, or use --wandb offline" if mode == "online" else ""
            raise InputError(f"{asked}: wandb could not start a run ({one_line(e)}){advice}") from None
        where = os.path.join(runs_dir, "offline-run-*")
        print(f"note: wandb could not start an online run within {timeout:g} s ({one_line(e)}): logging offline "
              f"instead; upload it later with: wandb sync {where}", flush=True)
        try:
            run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        except Exception as e:
            raise InputError(f"{asked}: wandb could not start an offline run either ({one_line(e)})") from None
    run = SafeRun(run)
    run.define_metric("epoch")
    for key in ("test/*", "val/*", "epoch_loss", "train_seconds", "eval_seconds", "samples_per_second"):
        run.define_metric(key, step_metric="epoch")
    return run


class SafeRun:
    """A wandb run whose failures cost the logging, never the training: the first exception from wandb prints one
    warning, and nothing more is sent to wandb in this run (what was logged before stays); finish() still tries to
    close the failed run, quietly, so that its files are complete and a later wandb.init starts afresh."""

    def __init__(self, run):
        self.run, self.id, self.failed = run, run.id, None
        self.summary = SimpleNamespace(update=lambda values: self.guard(lambda run: run.summary.update(values)))

    def guard(self, action):
        """action(run), unless wandb failed before; a wandb exception becomes one warning."""
        if self.run is None:
            return None
        try:
            return action(self.run)
        except Exception as e:
            print(f"warning: wandb failed ({type(e).__name__}: {one_line(e)}); training continues without wandb",
                  file=sys.stderr, flush=True)
            self.run, self.failed = None, self.run

    def log(self, *args, **kwargs):
        return self.guard(lambda run: run.log(*args, **kwargs))

    def define_metric(self, *args, **kwargs):
        return self.guard(lambda run: run.define_metric(*args, **kwargs))

    def log_model(self, path, name, metadata):
        """Upload the checkpoint at `path` as a model artifact."""
        def log(run):
            import wandb
            artifact = wandb.Artifact(name, type="model", metadata=metadata)
            artifact.add_file(path)
            run.log_artifact(artifact)
        return self.guard(log)

    def finish(self, **kwargs):
        self.guard(lambda run: run.finish(**kwargs))
        if self.failed is not None:
            try:
                self.failed.finish(**kwargs)
            except Exception:
                pass
        self.run = self.failed = None


def check_memory(args, data, device):
    """A one-line error naming the flag to lower when training would need more memory than `device` has left
    (estimated from a model built on the meta device, the epoch's samples and a batch's activations)."""
    factor = f"--latent_dim_mf {args.latent_dim_mf}" + (f" --num_layers {args.num_layers}"
                                                        if args.model in ("mlp", "neumf") else "")
    lower = "lower --latent_dim_mf" + (" or --num_layers" if args.model in ("mlp", "neumf") else "")
    try:
        with torch.device("meta"):
            model = build_model(data.num_users, data.num_items, args.latent_dim_mf, args.num_layers, args.model)
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as e:
        reason = f"MLP embeddings of {args.latent_dim_mf * 2 ** (args.num_layers - 1):.3g} values a row" \
            if args.model in ("mlp", "neumf") else one_line(e)
        raise InputError(f"{factor}: no model of this size can be built ({reason}); {lower}") from None
    params = sum(p.numel() for p in model.parameters())
    width = sum(m.embedding_dim if isinstance(m, torch.nn.Embedding) else m.out_features
                for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Linear)))
    samples = len(data.train_users) * (1 + args.num_neg)
    parts = {"model": params * 16, "samples": samples * SAMPLE_BYTES,  # weights, gradients, Adam's two moments
             "batch": min(args.batch_size, samples) * width * 4 * 3}  # activations, kept for backward, gradients
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if device.type == "cpu" else 1
    needed, available = sum(parts.values()) * processes, available_memory(device)
    if available is None or needed <= available:
        return
    total = f"training would need about {human_bytes(needed)}, more than the {human_bytes(available)} free on {device}"
    biggest = max(parts, key=parts.get)
    if biggest == "model":
        raise InputError(f"{factor}: the {args.model} model's {params:,} parameters take "
                         f"{human_bytes(parts['model'])} with gradients and optimizer state; {total}; {lower}")
    if biggest == "samples":
        raise InputError(f"--num_neg {args.num_neg}: an epoch's {samples:,} training samples ({len(data.train_users):,}"
                         f" positives x {1 + args.num_neg}) take {human_bytes(parts['samples'])}; {total}; "
                         f"lower --num_neg")
    raise InputError(f"--batch_size {args.batch_size}: a batch's activations take {human_bytes(parts['batch'])}; "
                     f"{total}; lower --batch_size")


def uses_sparse_updates(args, device, say=print):
    """Whether the embeddings get sparse (lazy) updates: asked for (by default on the CPU), and the optimizer and
    weight decay allow it."""
    wanted = device.type != "cuda" if args.sparse is None else args.sparse
    if wanted and (args.l2 > 0 or args.optim not in SPARSE_OPTIMIZERS):
        if args.sparse:
            say(f"note: dense embedding updates, as --optim {args.optim} with --l2 {args.l2} needs them")
        return False
    return wanted


def make_step(model, args, sparse, ctx):
    """The training step for `model` on every rank of `ctx`: FusedStep for Adam and SGD, autograd with a torch
    optimizer for the others and for --amp."""
    if args.optim in FUSED_OPTIMIZERS and not args.amp:
        return FusedStep(model, args.optim, args.lr, (args.beta1, args.beta2), l2=args.l2, sparse=sparse, ctx=ctx,
                         batch_size=args.batch_size)
    trained = distributed.data_parallel(model, ctx, args.batch_size)
    betas = {"betas": (args.beta1, args.beta2)} if args.optim == "adam" else {}
    if sparse:
        optimizer = SPARSE_OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, **betas)
    else:
        optimizer = OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, weight_decay=args.l2, **betas)
    return AutogradStep(trained, optimizer, args.amp, ctx.world_size)


def recommendation_rows(model, data, catalog, k):
    """[playlist id, rank, song id, score, names...] of the top-k songs for the first SHOWN_PLAYLISTS users."""
    user_ids = data.meta.get("user_ids")
    rows = []
    for user in data.test.users[:SHOWN_PLAYLISTS].tolist():
        items, scores = recommend(model, data, user, k)
        for rank, (item, score) in enumerate(zip(items.tolist(), scores.tolist()), 1):
            names = [value for key, value in catalog[item].items() if key != "id"]
            rows.append([user_ids[user] if user_ids else user, rank, catalog[item]["id"], round(score, 4), *names])
    return rows


def write_results_md(path, args, history, best, selection, columns, recommendations):
    """A markdown report for people without wandb: the per-epoch table and the best epoch's recommendations."""
    k = args.topk
    lines = [f"# {args.model} on {args.dataset}", "",
             f"Best epoch {best['epoch']}: HR@{k} {best['hr']:.4f}, NDCG@{k} {best['ndcg']:.4f} "
             f"({args.eval} evaluation, epoch chosen on {'validation' if selection == 'val' else 'test'} NDCG).",
             "", f"| epoch | loss | HR@{k} | NDCG@{k} | train s | eval s | samples/s |", "|---" * 7 + "|"]
    lines += [f"| {r['epoch']} | {r['loss']:.4f} | {r['hr']:.4f} | {r['ndcg']:.4f} | {r['train_seconds']:.1f} "
              f"| {r['eval_seconds']:.1f} | {r['samples_per_second']:,.0f} |" for r in history]
    lines += ["", f"## Top {k} recommendations at epoch {best['epoch']}", "",
              "| " + " | ".join(columns[1:]) + " |", "|---" * (len(columns) - 1) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in recommendations]
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")


def save_checkpoint(path, **state):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def train_epoch(model, train_step, data, args, ctx, epoch, stop=None, run=None, global_step=0, start_step=0,
                start_loss=0.0):
    """One pass over the epoch's positives and fresh negatives, from its batch `start_step` on (0 unless resuming
    mid-epoch, with `start_loss` the loss summed over the batches before it), through `train_step` (optim.py).
    Each global batch of --batch_size samples is dealt out across the ranks, and each sample's loss weighted by
    1 / the global batch, so that the gradient summed over the ranks is the global batch's mean loss's. Every
    --log_every steps the ranks agree on the loss and on any stop request (stop: a distributed.StopRequest).
    Returns (sum of the losses of the samples trained, over all ranks; steps taken; whether a stop request
    ended the epoch early). Raises Diverged when the loss is no longer finite."""
    users, items, labels = dataloader.epoch_samples(data, args.num_neg, args.seed, epoch)
    num_samples = len(users)
    model.train()
    loss_sum = torch.full((), start_loss, dtype=torch.float64, device=data.device)
    first = min(start_step * args.batch_size, num_samples)
    logged_loss, logged_samples = start_loss, first  # over all ranks, at the last log point
    started = time.perf_counter()
    shards = dataloader.batches([users, items, labels], args.batch_size, ctx.rank, ctx.world_size, start_step)
    step = start_step
    with tqdm(total=num_samples, initial=first, desc=f"epoch {epoch}", unit="sample", unit_scale=True, leave=False,
              disable=not (ctx.is_main and sys.stdout.isatty())) as bar:
        for step, (u, i, y) in enumerate(shards, start_step + 1):
            global_batch = min(args.batch_size, num_samples - (step - 1) * args.batch_size)
            loss_sum += train_step(u, i, y, 1.0 / global_batch)
            if step % args.log_every == 0:
                total, stops = ctx.sum([loss_sum.item(), stop is not None and stop.signum is not None])
                done = min(step * args.batch_size, num_samples)
                mean = (total - logged_loss) / (done - logged_samples)
                logged_loss, logged_samples = total, done
                if not math.isfinite(mean):
                    raise Diverged(mean)
                if run is not None:
                    run.log({"train/loss": mean, "epoch": epoch - 1 + done / num_samples},
                            step=global_step + step - start_step)
                bar.update(done - bar.n)
                speed = (done - first) / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{mean:.4f}", samples_per_s=f"{speed:,.0f}")
                if stops:
                    return ctx.sum([loss_sum.item()])[0], step - start_step, True
    return ctx.sum([loss_sum.item()])[0], step - start_step, False


def main(argv=None):
    args = parse_args(argv)
    gpus = gpu_indices(args.gpu)
    if gpus and len(gpus) > 1 and not distributed.launched() and torch.cuda.is_available():
        sys.exit(distributed.spawn(main, sys.argv[1:] if argv is None else argv, len(gpus)))
    ctx = distributed.setup(args.gpu)
    try:
        run_stages(args, ctx, given_flags(argv))
    finally:
        distributed.teardown()


def run_stages(args, ctx, given):
    """Resolve the data set and save directory, then train: continuing --resume (with the checkpoint's
    configuration, except the RESUMABLE_FLAGS in `given`), or the three stages of --pretrain, or one model."""
    checkpoint = None
    if args.resume:
        checkpoint = ctx.broadcast(load_checkpoint(args.resume) if ctx.is_main else None)
        overrides = {flag: getattr(args, flag) for flag in RESUMABLE_FLAGS if flag in given or flag == "resume"}
        args.__dict__.update(checkpoint["config"])
        args.__dict__.update(overrides)
        within = f" and {checkpoint['step']} steps of epoch {checkpoint['epoch'] + 1}" if checkpoint.get("step") else ""
        ctx.print(f"resuming {args.resume} after epoch {checkpoint['epoch']}{within} with its configuration")
    if args.dataset is None:
        args.dataset = ctx.broadcast(default_dataset(args.data_dir) if ctx.is_main else None)
    provenance, claim = None, None
    if ctx.is_main:
        provenance = run_provenance(args, ctx.device)
        if checkpoint is not None:
            check_split_unchanged(checkpoint, args, f"--resume {args.resume}")
        claim = SaveDir.claim(args, ctx, continuing=checkpoint is not None or distributed.restarted())
        args.save_dir = claim.path
    args.save_dir = ctx.broadcast(args.save_dir)
    try:
        if args.pretrain:
            save_dir = args.save_dir
            for stage in ("gmf", "mlp"):
                ctx.print(f"pretraining {stage.upper()} into {os.path.join(save_dir, stage)}")
                train(argparse.Namespace(**dict(vars(args), model=stage, pretrain=False, finetune_optim=None,
                                                finetune_lr=None, epochs=args.pretrain_epochs or args.epochs,
                                                pretrain_epochs=None, save_dir=os.path.join(save_dir, stage))),
                      ctx, provenance=provenance)
            ctx.print(f"training NeuMF from the pretrained GMF and MLP into {save_dir}")
            args = argparse.Namespace(**dict(vars(args), pretrain=False, pretrain_epochs=None,
                                             pretrain_gmf=os.path.join(save_dir, "gmf", "best.pt"),
                                             pretrain_mlp=os.path.join(save_dir, "mlp", "best.pt")))
        if args.pretrain_gmf:
            args.optim, args.lr = args.finetune_optim or args.optim, args.finetune_lr or args.lr
        train(args, ctx, checkpoint, provenance)
    except (InputError, SystemExit) as e:
        if claim is not None and (isinstance(e, InputError) or e.code == 2):
            claim.abandon()  # bad input stopped the run before it trained: leave no empty run behind
        raise
    finally:
        if claim is not None:
            claim.release()


def run_provenance(args, device):
    """What produced this run (code commit and tree state, library versions, device, split file hashes), printed
    once; results.json, the checkpoints and the wandb config record it."""
    record = code_provenance(device)
    record["split_files"] = fingerprint(args.data_dir, args.dataset)
    record["split_sha256"] = hashlib.sha256(json.dumps(record["split_files"], sort_keys=True).encode()).hexdigest()
    commit = record["git_commit"][:10] + (" with uncommitted changes" if record["git_dirty"] else "") \
        if record["git_commit"] else "unknown (not a git checkout)"
    print(f"code {commit}; Python {record['python']}, torch {record['torch']}, numpy {record['numpy']}, "
          f"CUDA {record['cuda'] or 'none'}; device {record['device']} ({record['device_name']}); "
          f"split {args.dataset} sha256 {record['split_sha256'][:12]}", flush=True)
    return record


def check_split_unchanged(checkpoint, args, source):
    """A one-line error naming the file when the split files differ from those the checkpoint was trained on."""
    changed = split_changes(checkpoint, args.data_dir, args.dataset)
    if changed:
        state = "is gone" if not os.path.exists(changed[0]) else "has changed"
        raise InputError(f"{source}: {changed[0]} {state} since the checkpoint was written (same name, other "
                         f"content): continue only on the split it was trained on, or start a new run")


def default_save_dir(dataset, ctx=None):
    """(save directory, the directories made for it, outermost first, when it is new, else None). A new
    runs/DATASET/YYYYMMDD-HHMMSS; under a wandb sweep agent runs/DATASET/sweep-SWEEP_ID/RUN_ID, so that the runs of
    a sweep, and agents sharing a machine, do not overwrite each other's checkpoints. After a torchrun restart, the
    directory the first attempt chose (kept in torchrun's store, which outlives the workers), so that the run
    continues there."""
    sweep, run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run:
        return os.path.join("runs", dataset, f"sweep-{sweep}", run), None
    store = ctx.store if ctx is not None else None
    key = f"main.py/save_dir/{dataset}"
    if store is not None and distributed.restarted() and store.check([key]):
        return store.get(key).decode(), None
    path, created = new_run_dir(os.path.join("runs", dataset))
    if store is not None:
        store.set(key, path)
    return path, created


def make_dirs(path, flag="--save_dir"):
    """os.makedirs(path, exist_ok=True), with a one-line error; returns the directories it created, outermost first."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        missing.insert(0, head)
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise InputError(f"{flag} {path}: {head} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot create it: {e.strerror}") from None
    return missing


def new_run_dir(parent):
    """(PARENT/YYYYMMDD-HHMMSS, the directories made for it, outermost first): a new directory (-2, -3, ... after
    the name when a run started in the same second), made with one mkdir, so two runs started at once never share
    one."""
    created = make_dirs(parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        path = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
            return path, created + [os.path.abspath(path)]
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"--save_dir {path}: cannot create it: {e.strerror}") from None
    raise InputError(f"--save_dir: too many runs in {parent} started at {stamp}")


def earlier_run(save_dir):
    """The first output of an earlier run in SAVE_DIR or its --pretrain stages (SAVE_DIR/gmf, SAVE_DIR/mlp), or None."""
    paths = (os.path.join(save_dir, stage, name) for stage in ("", "gmf", "mlp") for name in RUN_FILES)
    return next((path for path in paths if os.path.exists(path)), None)


class SaveDir:
    """The save directory of a run, held by rank 0 from start to end: created (a new default one, with
    runs/DATASET/latest pointed at it) or checked (one named by --save_dir must not hold an earlier run, unless
    --overwrite, --resume or a torchrun restart), and locked so that no second run writes into it meanwhile."""

    def __init__(self, path, created, latest=None, previous=None):
        self.path, self.created, self.latest, self.previous = path, created, latest, previous
        self.lock = None

    @classmethod
    def claim(cls, args, ctx, continuing):
        if args.save_dir:
            claim = cls(args.save_dir, make_dirs(args.save_dir))
        else:
            path, created = default_save_dir(args.dataset, ctx)
            claim = cls(path, created if created is not None else make_dirs(path))
            if created is not None:
                claim.point_latest()
        try:
            claim.lock = lock_directory(claim.path)
        except InputError:
            claim.abandon()
            raise
        earlier = earlier_run(claim.path)
        if earlier and not continuing:
            if not args.overwrite:
                claim.release()
                finished = "a finished" if os.path.exists(os.path.join(claim.path, "results.json")) else "an"
                raise InputError(f"--save_dir {claim.path} holds {finished} earlier run ({earlier}): continue it with "
                                 f"--resume {os.path.join(claim.path, 'last.pt')}, choose another --save_dir (or none, "
                                 f"for a new one under runs/{args.dataset}), or replace it with --overwrite")
            for stage in ("", "gmf", "mlp"):
                for name in (*RUN_FILES, "results.md"):
                    if os.path.exists(os.path.join(claim.path, stage, name)):
                        os.remove(os.path.join(claim.path, stage, name))
            print(f"--overwrite: deleted the earlier run's results and checkpoints in {claim.path}", flush=True)
        return claim

    def point_latest(self):
        """runs/DATASET/latest -> this run's directory (a relative symbolic link, replaced in one rename)."""
        self.latest = os.path.join(os.path.dirname(self.path), "latest")
        try:
            self.previous = point_symlink(self.latest, os.path.basename(self.path))
        except OSError as e:
            print(f"note: cannot point {self.latest} at {self.path} ({e.strerror})", flush=True)
            self.latest = None

    def abandon(self):
        """Remove what this run created, if it wrote no results or checkpoints, and point latest back."""
        if not self.created or self.created[-1] != os.path.abspath(self.path) or earlier_run(self.path):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self.latest and os.path.islink(self.latest) and os.readlink(self.latest) == os.path.basename(self.path):
            if self.previous:
                point_symlink(self.latest, self.previous)
            else:
                os.remove(self.latest)
        for directory in reversed(self.created[:-1]):
            try:
                os.rmdir(directory)
            except OSError:
                break

    def release(self):
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def same_run(config, args):
    """Whether a saved configuration is the one `args` describes, the flags that may change on --resume aside."""
    return {k: v for k, v in config.items() if k not in RESUMABLE_FLAGS} == \
        {k: v for k, v in vars(args).items() if k not in RESUMABLE_FLAGS}


def restart_point(args):
    """After torchrun restarted the workers: "finished" when SAVE_DIR holds this run's results, the run's last.pt
    checkpoint when there is one to continue, else None."""
    results_path, last_path = os.path.join(args.save_dir, "results.json"), os.path.join(args.save_dir, "last.pt")
    if os.path.exists(results_path):
        with open(results_path) as f:
            if same_run(json.load(f)["config"], args):
                return "finished"
    if os.path.exists(last_path):
        checkpoint = load_checkpoint(last_path)
        if same_run(checkpoint["config"], args):
            check_split_unchanged(checkpoint, args, f"restarted from {last_path}")
            return checkpoint
    return None


def train(args, ctx, checkpoint=None, provenance=None):
    """Train and evaluate one model as `args` says (from scratch, or continuing `checkpoint`) on every rank of
    `ctx`; rank 0 writes the outputs and logs."""
    device = ctx.device
    torch.set_num_threads(args.threads)
    if distributed.restarted():
        restart = ctx.broadcast(restart_point(args) if ctx.is_main else None)
        if restart == "finished":
            ctx.print(f"restarted: {args.save_dir} already holds this run's results")
            return
        if restart is not None:
            checkpoint = restart
            ctx.print(f"restarted: resuming {os.path.join(args.save_dir, 'last.pt')} after epoch {checkpoint['epoch']}"
                      + (f" and {checkpoint['step']} steps" if checkpoint.get("step") else ""))
    torch.manual_seed(args.seed)
    data = dataloader.load(args.data_dir, args.dataset, device, args.exclude_test_neg)
    ctx.print(f"{args.dataset}: {data.num_users:,} users x {data.num_items:,} items, {len(data.train_users):,} "
              f"training pairs, {len(data.test.users):,} test users, {data.test.items.shape[1] - 1} negatives each"
              + (", with validation" if data.val is not None else "") + f"; device {device}"
              + (f", {ctx.world_size} processes" if ctx.world_size > 1 else ""))
    check_memory(args, data, device)

    sparse = uses_sparse_updates(args, device, ctx.print)
    model = build_model(data.num_users, data.num_items, args.latent_dim_mf, args.num_layers, args.model,
                        sparse).to(device)
    if args.pretrain_gmf and checkpoint is None and ctx.is_main:  # the other ranks get these weights from rank 0
        gmf, mlp = load_pretrained_checkpoints(args, data, device)
        load_pretrained(model, gmf["model"], mlp["model"], args.alpha)
    history, best, start_epoch, start_step, global_step, run_id = [], None, 1, 0, 0, None
    start_loss = 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        torch.set_rng_state(checkpoint["rng"])
        history, best, global_step, run_id = (checkpoint["history"], checkpoint["best"],
                                              checkpoint["global_step"], checkpoint["wandb_id"])
        start_epoch, start_step = checkpoint["epoch"] + 1, checkpoint.get("step", 0)
        start_loss = checkpoint.get("epoch_loss_sum", 0.0) if ctx.is_main else 0.0  # summed over ranks once
    train_step = make_step(model, args, sparse, ctx)
    if checkpoint is not None:
        train_step.load_state_dict(checkpoint["optimizer"])
    run = None
    if ctx.is_main:
        os.makedirs(args.save_dir, exist_ok=True)
        run = start_wandb(args, data, run_id, provenance)
    if run is not None:
        import wandb
    selection = "val" if data.val is not None else "test"
    k = args.topk

    def score(candidates):
        """(HR@k, NDCG@k) over `candidates`, each rank ranking every world_size-th row."""
        shard = dataloader.Candidates(candidates.users[ctx.rank::ctx.world_size],
                                      candidates.items[ctx.rank::ctx.world_size])
        ranks = sampled_ranks(model, shard) if args.eval == "sampled" else full_ranks(model, data, shard)
        ranks = ctx.gather_rows(ranks)
        return hit_ratio_from_ranks(ranks, k), ndcg_from_ranks(ranks, k)

    catalog, columns = None, []
    if ctx.is_main:  # names for the recommendation tables, which only rank 0 writes
        catalog = item_names(data.meta, range(data.num_items))
        columns = ["epoch", "playlist", "rank", "song_id", "score"] + [f for f in catalog[0] if f != "id"]
    best_recommendations = checkpoint.get("recommendations", []) if checkpoint else []

    def state(**position):
        return dict(config=vars(args), model=model.state_dict(), optimizer=train_step.state_dict(),
                    rng=torch.get_rng_state(), history=history, best=best, global_step=global_step,
                    recommendations=best_recommendations, wandb_id=run.id if run is not None else None,
                    provenance=provenance, **position)

    last_path = os.path.join(args.save_dir, "last.pt")
    with distributed.StopRequest(announce=ctx.is_main) as stop:
        for epoch in range(start_epoch, args.epochs + 1):
            started = time.perf_counter()
            try:
                loss_sum, steps, interrupted = train_epoch(model, train_step, data, args, ctx, epoch, stop, run,
                                                           global_step, start_step, start_loss)
            except Diverged as e:
                stop_diverged(ctx, run, e.args[0], epoch, last_path)
            train_seconds = time.perf_counter() - started
            global_step += steps
            if interrupted:
                step = start_step + steps
                if ctx.is_main:
                    save_checkpoint(last_path, **state(epoch=epoch - 1, step=step, epoch_loss_sum=loss_sum))
                stop_interrupted(ctx, run, stop, f"in epoch {epoch} after step {step}", last_path)
            num_samples = len(data.train_users) * (1 + args.num_neg)
            samples = num_samples - min(start_step * args.batch_size, num_samples)
            start_step, start_loss = 0, 0.0
            loss = loss_sum / num_samples
            if not math.isfinite(loss):
                stop_diverged(ctx, run, loss, epoch, last_path)
            started = time.perf_counter()
            hr, ndcg = score(data.test)
            val_hr, val_ndcg = score(data.val) if data.val is not None else (None, None)
            eval_seconds = time.perf_counter() - started
            record = {"epoch": epoch, "loss": loss, "hr": hr, "ndcg": ndcg, "train_seconds": train_seconds,
                      "eval_seconds": eval_seconds, "samples_per_second": samples / train_seconds}
            if data.val is not None:
                record.update(val_hr=val_hr, val_ndcg=val_ndcg)
            history.append(record)
            ctx.print(f"epoch {epoch} loss {loss:.4f} HR@{k} {hr:.4f} NDCG@{k} {ndcg:.4f}"
                      + (f" (val HR@{k} {val_hr:.4f} NDCG@{k} {val_ndcg:.4f})" if data.val is not None else "")
                      + f" train {train_seconds:.1f}s eval {eval_seconds:.1f}s")
            selected = val_ndcg if data.val is not None else ndcg
            improved = best is None or selected > best["selected"]
            if improved:
                best = {"epoch": epoch, "hr": hr, "ndcg": ndcg, "selected": selected}
            if ctx.is_main:
                recommendations = recommendation_rows(model, data, catalog, k)
                if improved:
                    best_recommendations = recommendations
                if run is not None:
                    logged = {"epoch": epoch, "epoch_loss": loss, f"test/hr@{k}": hr, f"test/ndcg@{k}": ndcg,
                              "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                              "samples_per_second": record["samples_per_second"]}
                    if data.val is not None:
                        logged.update({f"val/hr@{k}": val_hr, f"val/ndcg@{k}": val_ndcg})
                    logged["recommendations"] = wandb.Table(columns=columns,
                                                            data=[[epoch, *r] for r in recommendations])
                    run.log(logged, step=global_step)
                    run.summary.update({"best_epoch": best["epoch"], f"best/hr@{k}": best["hr"],
                                        f"best/ndcg@{k}": best["ndcg"]})
                if improved:
                    save_checkpoint(os.path.join(args.save_dir, "best.pt"), **state(epoch=epoch))
                save_checkpoint(last_path, **state(epoch=epoch))
            if ctx.sum([stop.signum is not None])[0] and epoch < args.epochs:
                stop_interrupted(ctx, run, stop, f"after epoch {epoch}", last_path)
            if args.patience and epoch - best["epoch"] >= args.patience:
                ctx.print(f"no better {selection} NDCG@{k} for {args.patience} epochs: stopping early")
                break

    if ctx.is_main:
        results = {"best_epoch": best["epoch"], "hr": best["hr"], "ndcg": best["ndcg"], "selection": selection,
                   "protocol": args.eval, "history": history, "config": vars(args), "provenance": provenance}
        with atomic_open(os.path.join(args.save_dir, "results.json")) as f:
            json.dump(results, f, indent=1)
        write_results_md(os.path.join(args.save_dir, "results.md"), args, history, best, selection, columns,
                         best_recommendations)
        if run is not None:
            if args.log_model:
                run.log_model(os.path.join(args.save_dir, "best.pt"), f"{args.model}-{args.dataset}", results["config"])
            run.finish()
    ctx.print(f"best epoch {best['epoch']}: HR@{k} {best['hr']:.4f} NDCG@{k} {best['ndcg']:.4f}")


def stop_interrupted(ctx, run, stop, where, last_path):
    """End the run after Ctrl-C or SIGTERM, last.pt written, with the command that continues it."""
    launcher = "torchrun ... main.py" if distributed.launched() else "python3 main.py"
    ctx.print(f"stopped {where}: wrote {last_path}; continue with: {launcher} --resume {last_path}")
    if run is not None:
        run.finish(exit_code=stop.exit_status)
    sys.exit(stop.exit_status)


def stop_diverged(ctx, run, loss, epoch, last_path):
    """End the run (exit status 1) when the loss is no longer finite; last.pt keeps the last good epoch."""
    kept = f"the last good checkpoint is {last_path}" if os.path.exists(last_path) else "no checkpoint was written"
    if ctx.is_main:
        print(f"error: the training loss became {loss} in epoch {epoch}; stopping. {kept.capitalize()} "
              f"(try a smaller --lr)", file=sys.stderr, flush=True)
    if run is not None:
        run.finish(exit_code=1)
    sys.exit(1)


if __name__ == "__main__":
    distributed.run_process(main)
