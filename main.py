"""Train GMF, MLP, NeuMF or MF on a leave-one-out split and evaluate HR@K / NDCG@K every epoch.

    python3 main.py                      # the Melon split in data/ if present, else the built-in synthetic sample
    python3 main.py --data_dir ../shared/data/ncf-ml-1m --dataset ml-1m

Writes SAVE_DIR/results.json, best.pt and last.pt (SAVE_DIR: a new runs/DATASET/YYYYMMDD-HHMMSS for every run
unless --save_dir is given; runs/DATASET/latest points to the newest), logs to Weights & Biases, and prints as its
last line `best epoch N: HR@10 h NDCG@10 n`. On a split with Arena answers (split.py --arena) the best checkpoint
also continues the split's questions: its Arena score goes to results.json ("arena") and the wandb summary.

Read top to bottom: the command line; main and run_stages (resume, the save directory, --pretrain's stages);
train (data, model, position) and train_epochs, the epoch loop; Outputs, what rank 0 writes and logs.
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import torch

import continuation
import dataloader
import distributed
import recipe
from arena import arena_line, read_task
from catalog import item_names
from model import MODELS, ModelConfig, build_model, init_embeddings, load_pretrained, model_size
from optim import FUSED_OPTIMIZERS, OPTIMIZERS
from runs import (RESUMABLE_FLAGS, SaveDir, carry_best, check_split_unchanged, compact, load_checkpoint,
                  load_pretrained_checkpoints, restart_point, run_provenance, save_checkpoint, split_of)
from scoring import recommend, score
from training import Diverged, Position, Stopped, epoch_size, make_step, train_epoch, uses_sparse_updates
from utils import (MAX_THREADS, InputError, Parser, atomic_open, available_memory, gpu_indices, human_bytes,
                   keep_freed_memory, one_line)
from wandb_log import WANDB_PROJECT, log_epoch, start_wandb

SHOWN_PLAYLISTS = 3  # playlists whose top-K recommendations are logged at every evaluation
SAMPLE_BYTES = 48  # memory per training sample of an epoch: user, item, label, shuffled and copied


# --- the command line ---

def build_parser():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data", help="directory holding the split files")
    p.add_argument("--dataset", default=None,
                   help="split name (default: melon if DATA_DIR/melon.train.rating exists, else the built-in sample)")
    p.add_argument("--model", choices=MODELS, default="neumf")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--latent_dim_mf", type=int, default=8,
                   help="predictive factors: GMF embedding size and last MLP layer width")
    p.add_argument("--num_layers", type=int, default=3,
                   help="MLP layers (MLP embeddings of latent_dim_mf * 2^(num_layers - 1) per side)")
    p.add_argument("--num_neg", type=int, default=4, help="training negatives per positive, redrawn every epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l2", type=float, default=0.0, help="weight decay")
    p.add_argument("--touched_l2", type=float, default=0.0,
                   help="L2 added to each sample's gradient on the parameters it touches (its user's and item's "
                        "embedding rows and biases, the dense parameters), as per-example SGD applies it (Rendle et "
                        "al. 2020); with --optim adam or sgd")
    p.add_argument("--init_std", type=float, default=None,
                   help="standard deviation of the embeddings' normal initialisation (default 0.01, the NCF paper's; "
                        "biases start at 0)")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam's beta1")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's beta2")
    p.add_argument("--optim", choices=OPTIMIZERS, default="adam")
    p.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=None,
                   help="update only the embedding rows in each batch (lazy Adam; with --l2 0 and adam, sgd or "
                        "adagrad); --no-sparse: the seed's dense update of every row at every step (default: "
                        "sparse on the CPU, dense on CUDA, where it is faster)")
    p.add_argument("--step", choices=["fused", "autograd"], default=None,
                   help="the training step: fused (gradients derived by hand; adam, sgd) or autograd (through the "
                        "model's forward); default: fused where one step of it agrees with autograd on a small batch "
                        "(checked at start), else autograd, with a line saying so")
    p.add_argument("--gpu", default="0", help="CUDA index, or a list like 2,3 (one process per GPU), or cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--topk", type=int, default=10, help="K of HR@K and NDCG@K")
    p.add_argument("--eval", choices=["sampled", "full"], default="sampled",
                   help="sampled: held-out item among its 99 negatives; full: among all items unseen in training")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better NDCG (0: never stop early)")
    p.add_argument("--exclude_test_neg", action=argparse.BooleanOptionalAction, default=True,
                   help="training negatives avoid the user's held-out items and their evaluation negatives, as the "
                        "seed did (--no-exclude_test_neg: the NCF paper's protocol: they avoid only the user's "
                        "training items, so the held-out test and validation items can be drawn)")
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
    p.add_argument("--recipe", choices=["arena"], default=None,
                   help="arena: the playlist continuation recipe on a split with Arena questions (recipe.py): every "
                        "setting chosen on validation questions carved from the training playlists")
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
    if args.threads > MAX_THREADS:
        p.error(f"--threads must be at most {MAX_THREADS}, got {args.threads}")
    for flag in ("patience", "l2", "touched_l2"):
        if not 0 <= getattr(args, flag) < math.inf:
            p.error(f"--{flag} must be a finite number, not negative, got {getattr(args, flag)}")
    for flag in ("lr", "finetune_lr"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):
            p.error(f"--{flag} must be a positive number, got {value}")
    if args.init_std is not None and not (args.init_std > 0 and math.isfinite(args.init_std)):
        p.error(f"--init_std must be a positive number, got {args.init_std}")
    if args.touched_l2 and (args.optim not in FUSED_OPTIMIZERS or args.amp or args.step == "autograd"):
        p.error(f"--touched_l2 needs the fused step: --optim {' or '.join(FUSED_OPTIMIZERS)}, without --amp or "
                f"--step autograd")
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
    if args.step == "fused" and ({args.optim, args.finetune_optim or args.optim} - set(FUSED_OPTIMIZERS) or args.amp):
        p.error(f"--step fused needs --optim (and --finetune_optim) {' or '.join(FUSED_OPTIMIZERS)}, without --amp")
    if (args.pretrain_gmf or args.pretrain_mlp) and (args.model != "neumf" or not (args.pretrain_gmf and args.pretrain_mlp)):
        p.error("--pretrain_gmf and --pretrain_mlp go together, with --model neumf")
    if args.pretrain and (args.model != "neumf" or args.pretrain_gmf or args.resume):
        p.error("--pretrain trains NeuMF from scratch: not with --model gmf/mlp/mf, --pretrain_gmf or --resume")
    return args


def recommendation_rows(model, data, catalog, k):
    """[playlist id, rank, song id, score, names...] of the top-k songs for the first SHOWN_PLAYLISTS users."""
    user_ids = data.meta.get("user_ids")
    rows = []
    for user in data.test.users[:SHOWN_PLAYLISTS].tolist():
        items, scores = recommend(model, data, user, k)
        for rank, (item, item_score) in enumerate(zip(items.tolist(), scores.tolist()), 1):
            names = [value for key, value in catalog[item].items() if key != "id"]
            rows.append([user_ids[user] if user_ids else user, rank, catalog[item]["id"], round(item_score, 4), *names])
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


def check_memory(args, data, device):
    """A one-line error naming the flag to lower when training would need more memory than `device` has left
    (estimated by arithmetic from the model's size, the epoch's samples and a batch's activations)."""
    factor = f"--latent_dim_mf {args.latent_dim_mf}" + (f" --num_layers {args.num_layers}"
                                                        if args.model in ("mlp", "neumf") else "")
    lower = "lower --latent_dim_mf" + (" or --num_layers" if args.model in ("mlp", "neumf") else "")
    try:
        params, width = model_size(ModelConfig.of(args), data.num_users, data.num_items)
    except OverflowError as e:
        reason = f"MLP embeddings of {args.latent_dim_mf * 2 ** (args.num_layers - 1):.3g} values a row" \
            if args.model in ("mlp", "neumf") else one_line(e)
        raise InputError(f"{factor}: no model of this size can be built ({reason}); {lower}") from None
    samples = epoch_size(data, args)
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


# --- the run: resuming, the save directory, --pretrain's stages ---

def main(argv=None):
    args = parse_args(argv)
    given = given_flags(argv)
    if args.recipe == "arena":
        keep_freed_memory()
        return recipe.run(args, given)
    checkpoint = resume(args, given) if args.resume else None  # first: the checkpoint's --gpu chooses the device
    gpus = gpu_indices(args.gpu)
    if gpus and len(gpus) > 1 and not distributed.launched() and torch.cuda.is_available():
        sys.exit(distributed.spawn(main, sys.argv[1:] if argv is None else argv, len(gpus)))
    ctx = distributed.setup(args.gpu)
    try:
        run_stages(args, ctx, given, checkpoint)
    finally:
        distributed.teardown()


def run_stages(args, ctx, given, checkpoint=None):
    """Resolve the data set and save directory, then train: continuing the --resume `checkpoint` (whose
    configuration `args` holds, except the RESUMABLE_FLAGS in `given`), or the three stages of --pretrain, or one
    model."""
    if args.dataset is None:
        args.dataset = ctx.broadcast(dataloader.default_dataset(args.data_dir) if ctx.is_main else None)
    provenance, claim = None, None
    if ctx.is_main:
        provenance = run_provenance(args, ctx.device)
        if checkpoint is not None:
            check_split_unchanged(checkpoint, args, f"--resume {args.resume}", provenance["split_files"])
        resumed_here = checkpoint is not None and os.path.abspath(os.path.dirname(args.resume) or ".") == \
            os.path.abspath(args.save_dir)
        claim = SaveDir.claim(args, ctx, continuing=resumed_here or distributed.restarted())
        args.save_dir = claim.path
        if checkpoint is not None and not resumed_here:
            carry_best(args.resume, args.save_dir)
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


def resume(args, given):
    """The --resume checkpoint, read by every process before the device is chosen; `args` takes its configuration,
    except the RESUMABLE_FLAGS given on the command line. Says what the run will do."""
    checkpoint = load_checkpoint(args.resume)
    if "optimizer" not in checkpoint:
        raise InputError(f"--resume {args.resume}: holds the model only (a best.pt); continue from the run's last.pt")
    overrides = {flag: getattr(args, flag) for flag in RESUMABLE_FLAGS if flag in given or flag == "resume"}
    # the run continues where its last.pt is (a copied run's copy), or in --save_dir: never in the directory the
    # checkpoint names, which may be another run's
    save_dir = args.save_dir if "save_dir" in given else os.path.dirname(args.resume) or "."
    data_dir = args.data_dir if "data_dir" in given else None  # the split moved: checked to be the same files
    args.__dict__.update(checkpoint["config"])
    args.__dict__.update(overrides, save_dir=save_dir)
    args.data_dir, args.dataset = split_of(checkpoint, args.resume, data_dir)  # found from wherever this runs
    if os.environ.get("RANK", "0") == "0":
        within = f" and {checkpoint['step']} steps of epoch {checkpoint['epoch'] + 1}" if checkpoint.get("step") else ""
        print(f"resuming {args.resume} after epoch {checkpoint['epoch']}{within} with its configuration: "
              f"{args.model} on {args.dataset or 'the default data set'}, epochs {checkpoint['epoch'] + 1} to "
              f"{args.epochs}, --gpu {args.gpu}, --threads {args.threads}; writing into {save_dir}"
              + (" (--save_dir)" if "save_dir" in given else ""), flush=True)
    return checkpoint


def restarted(args, ctx, checkpoint, provenance):
    """After torchrun restarted the workers: "finished" when SAVE_DIR holds this run's results, else the
    checkpoint to continue from (the run's last.pt, when it has one)."""
    restart = ctx.broadcast(restart_point(args, provenance["split_files"]) if ctx.is_main else None)
    if restart == "finished":
        ctx.print(f"restarted: {args.save_dir} already holds this run's results")
    elif restart is not None:
        ctx.print(f"restarted: resuming {os.path.join(args.save_dir, 'last.pt')} after epoch {restart['epoch']}"
                  + (f" and {restart['step']} steps" if restart.get("step") else ""))
    return restart if restart is not None else checkpoint


# --- training one model ---

def train(args, ctx, checkpoint=None, provenance=None):
    """Train and evaluate one model as `args` says (from scratch, or continuing `checkpoint`) on every rank of
    `ctx`; rank 0 writes the outputs and logs."""
    torch.set_num_threads(args.threads)
    if distributed.restarted():
        checkpoint = restarted(args, ctx, checkpoint, provenance)
        if checkpoint == "finished":
            return
    torch.manual_seed(args.seed)
    data = dataloader.load(args.data_dir, args.dataset, ctx.device, args.exclude_test_neg)
    ctx.print(f"{args.dataset}: {data.num_users:,} users x {data.num_items:,} items, {len(data.train_users):,} "
              f"training pairs, {len(data.test.users):,} test users, {data.test.items.shape[1] - 1} negatives each"
              + (", with validation" if data.val is not None else "") + f"; device {ctx.device}"
              + (f", {ctx.world_size} processes" if ctx.world_size > 1 else ""))
    check_memory(args, data, ctx.device)
    model, train_step, sparse = build(args, data, ctx, checkpoint)
    position = Position.from_checkpoint(checkpoint, ctx.is_main)
    outputs = Outputs(args, data, model, train_step, checkpoint, provenance, sparse) if ctx.is_main else None
    train_epochs(args, ctx, data, model, train_step, position, outputs)
    if outputs is not None:
        outputs.finish(position)
    best = position.best
    ctx.print(f"best epoch {best['epoch']}: HR@{args.topk} {best['hr']:.4f} NDCG@{args.topk} {best['ndcg']:.4f}")


def build(args, data, ctx, checkpoint):
    """(model, training step, whether its embedding updates are sparse) as `args` say: new (from pretrained GMF and
    MLP with --pretrain_gmf/--pretrain_mlp), or as `checkpoint` left them (the RNG state too)."""
    sparse = uses_sparse_updates(args, ctx.device, ctx.print)
    if checkpoint is not None:
        note_update_rule_change(checkpoint, sparse, args, ctx)
    model = build_model(ModelConfig.of(args), data.num_users, data.num_items, sparse).to(ctx.device)
    if args.init_std is not None:
        init_embeddings(model, args.init_std)
    if args.pretrain_gmf and checkpoint is None and ctx.is_main:  # the other ranks get these weights from rank 0
        gmf, mlp = load_pretrained_checkpoints(args, data, ctx.device)
        load_pretrained(model, gmf["model"], mlp["model"], args.alpha)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        torch.set_rng_state(checkpoint["rng"])
    train_step = make_step(model, args, sparse, ctx)
    if checkpoint is not None:
        try:
            train_step.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError):
            raise InputError(f"{args.resume or os.path.join(args.save_dir, 'last.pt')}: its optimizer state does "
                             f"not fit this version's {type(train_step).__name__} (an older checkpoint?); "
                             f"start a new run") from None
    return model, train_step, sparse


def note_update_rule_change(checkpoint, sparse, args, ctx):
    """One line when the device a run resumes on changes its embedding update rule (--sparse's default: lazy on
    the CPU, dense on CUDA) from the one its checkpoint was trained with."""
    device = (checkpoint.get("provenance") or {}).get("device", "")
    before = checkpoint.get("sparse_updates")  # older checkpoints: as --sparse's default chose on their device
    if before is None:
        before = uses_sparse_updates(argparse.Namespace(**checkpoint["config"]), torch.device(device or "cpu"),
                                     lambda line: None)
    if before != sparse:
        rule = {True: f"sparse (lazy {args.optim}) embedding updates", False: f"dense {args.optim} updates"}
        ctx.print(f"note: the update rule changes on resuming: {rule[sparse]} on {ctx.device}, where the checkpoint "
                  f"was trained with {rule[before]} on {device or 'another device'} (--sparse's default)")


def train_epochs(args, ctx, data, model, train_step, position, outputs):
    """The epochs from `position` on: train, evaluate, one record of the epoch (history, printed line, wandb,
    checkpoints), then stop requests and early stopping. `outputs`: rank 0's Outputs, None on the other ranks."""
    k, last_path = args.topk, os.path.join(args.save_dir, "last.pt")
    run = outputs.run if outputs is not None else None
    model.train()
    with distributed.StopRequest(announce=ctx.is_main) as stop:
        for epoch in range(position.epoch + 1, args.epochs + 1):
            # train: the epoch's batches (from position.step on, when resuming inside it)
            started = time.perf_counter()
            try:
                samples = train_epoch(train_step, data, args, ctx, position, stop, run)
            except Stopped:
                if outputs is not None:
                    outputs.save(last_path, position)
                stop_interrupted(ctx, run, stop, f"in epoch {epoch} after step {position.step}", last_path)
            except Diverged as e:
                stop_diverged(ctx, run, e.args[0], epoch, last_path)
            train_seconds = time.perf_counter() - started
            loss = position.end_epoch(epoch_size(data, args))
            if not math.isfinite(loss):
                stop_diverged(ctx, run, loss, epoch, last_path)

            # evaluate: test, and validation when the split has it
            started = time.perf_counter()
            hr, ndcg = score(model, data, data.test, k, args.eval, ctx)
            val = score(model, data, data.val, k, args.eval, ctx) if data.val is not None else None
            eval_seconds = time.perf_counter() - started

            # the epoch's record: built once, then kept, printed, logged and saved
            record = {"epoch": epoch, "loss": loss, "hr": hr, "ndcg": ndcg, "train_seconds": train_seconds,
                      "eval_seconds": eval_seconds, "samples_per_second": samples / train_seconds}
            if val is not None:
                record.update(val_hr=val[0], val_ndcg=val[1])
            improved = position.add(record, selected=val[1] if val is not None else ndcg)
            ctx.print(epoch_line(record, k))
            if outputs is not None:
                outputs.epoch(record, position, improved)

            # stop requests and early stopping
            if ctx.sum([stop.signum is not None])[0] and epoch < args.epochs:
                stop_interrupted(ctx, run, stop, f"after epoch {epoch}", last_path)
            if args.patience and epoch - position.best["epoch"] >= args.patience:
                selection = "val" if data.val is not None else "test"
                ctx.print(f"no better {selection} NDCG@{k} for {args.patience} epochs: stopping early")
                break


def epoch_line(record, k):
    """The line printed for an epoch's record."""
    val = f" (val HR@{k} {record['val_hr']:.4f} NDCG@{k} {record['val_ndcg']:.4f})" if "val_hr" in record else ""
    return (f"epoch {record['epoch']} loss {record['loss']:.4f} HR@{k} {record['hr']:.4f} NDCG@{k} "
            f"{record['ndcg']:.4f}{val} train {record['train_seconds']:.1f}s eval {record['eval_seconds']:.1f}s")


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


# --- what rank 0 writes and logs ---

def wandb_run_to_continue(checkpoint, args):
    """The wandb run id a resumed run logs to: its checkpoint's when it continues in the directory the checkpoint
    was written in, else none (a new wandb run: a copy of a run, resumed, is a run of its own)."""
    run_id = checkpoint.get("wandb_id") if checkpoint else None
    written_in = checkpoint["config"].get("save_dir") if checkpoint else None
    if run_id and written_in and os.path.realpath(written_in) != os.path.realpath(args.save_dir):
        print(f"note: {args.save_dir} is not {written_in}, where the checkpoint was written: a new wandb run, not "
              f"{run_id}'s continuation", flush=True)
        return None
    return run_id


class Outputs:
    """Rank 0's side of a run in its save directory: the wandb run, the recommendations shown for a few playlists,
    the checkpoints (best.pt, last.pt) and, at the end, results.json and results.md."""

    def __init__(self, args, data, model, train_step, checkpoint, provenance, sparse):
        self.args, self.data, self.model, self.train_step = args, data, model, train_step
        self.provenance = dict(provenance, step=train_step.name)  # the step used: --step's choice or the check's
        self.sparse = sparse
        files = data.meta.get("arena")  # the Arena questions and answers scored at the end, checked before training
        self.arena_task = read_task(files["questions"], files["answers"]) if files else None
        os.makedirs(args.save_dir, exist_ok=True)
        self.run = start_wandb(args, data, wandb_run_to_continue(checkpoint, args), self.provenance)
        self.catalog = item_names(data.meta, range(data.num_items))
        self.columns = ["epoch", "playlist", "rank", "song_id", "score"] + [f for f in self.catalog[0] if f != "id"]
        self.recommendations = checkpoint.get("recommendations", []) if checkpoint else []  # the best epoch's
        self.selection = "val" if data.val is not None else "test"

    def save(self, path, position, resumable=True):
        """A checkpoint: configuration, model, `position`, the best recommendations and provenance; when `resumable`
        (last.pt) the optimizer and RNG states too, which best.pt does without. Each tensor once, compact."""
        state = dict(config=vars(self.args), model=compact(self.model.state_dict()), **position.state(),
                     recommendations=self.recommendations, wandb_id=self.run.id if self.run is not None else None,
                     provenance=self.provenance)
        if resumable:
            state.update(optimizer=compact(self.train_step.state_dict()), rng=torch.get_rng_state(),
                         sparse_updates=self.sparse)
        save_checkpoint(path, state)

    def epoch(self, record, position, improved):
        """An epoch's record: its recommendations; logged to wandb; best.pt when it is the best, and last.pt."""
        recommendations = recommendation_rows(self.model, self.data, self.catalog, self.args.topk)
        if improved:
            self.recommendations = recommendations
        if self.run is not None:
            log_epoch(self.run, record, self.args.topk, recommendations, self.columns, position.global_step,
                      position.best)
        if improved:
            self.save(os.path.join(self.args.save_dir, "best.pt"), position, resumable=False)
        self.save(os.path.join(self.args.save_dir, "last.pt"), position)

    def arena(self, epoch):
        """The best checkpoint's Arena score on the split's questions and answers (split.py --arena), or None:
        {"song_ndcg", "tag_ndcg", "score", "seconds", "epoch"}, also printed."""
        files = self.data.meta.get("arena")
        if self.arena_task is None:
            return None
        started = time.perf_counter()
        model = copy.deepcopy(self.model)
        model.load_state_dict(load_checkpoint(os.path.join(self.args.save_dir, "best.pt"))["model"])
        model.eval()
        answering = continuation.for_model(model.cpu(), self.data, self.args.data_dir)
        done = continuation.answer_file(answering, files["questions"], answers_path=files["answers"],
                                        task=self.arena_task)
        song, tag, total = done["score"]
        print(f"Arena score of the best checkpoint (epoch {epoch}) on {files['questions']}: "
              + arena_line(song, tag, total))
        return {"song_ndcg": song, "tag_ndcg": tag, "score": total, "epoch": epoch,
                "seconds": time.perf_counter() - started}

    def finish(self, position):
        """results.json and results.md from the history; the model artifact (--log_model); the wandb run closed."""
        args, best = self.args, position.best
        results = {"best_epoch": best["epoch"], "hr": best["hr"], "ndcg": best["ndcg"], "selection": self.selection,
                   "protocol": args.eval, "history": position.history, "config": vars(args),
                   "provenance": self.provenance}
        arena = self.arena(best["epoch"])
        if arena is not None:
            results["arena"] = arena
            if self.run is not None:
                self.run.summary.update({f"arena/{key}": value for key, value in arena.items()})
        with atomic_open(os.path.join(args.save_dir, "results.json")) as f:
            json.dump(results, f, indent=1)
        write_results_md(os.path.join(args.save_dir, "results.md"), args, position.history, best, self.selection,
                         self.columns, self.recommendations)
        if self.run is not None:
            if args.log_model:
                self.run.log_model(os.path.join(args.save_dir, "best.pt"), f"{args.model}-{args.dataset}",
                                   results["config"])
            self.run.finish()


if __name__ == "__main__":
    distributed.run_process(main)
