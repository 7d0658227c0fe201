"""Train GMF, MLP or NeuMF on a leave-one-out split and evaluate HR@K / NDCG@K every epoch.

    python3 main.py                      # the Melon split in data/ if present, else the built-in synthetic sample
    python3 main.py --data_dir ../shared/data/ncf-ml-1m --dataset ml-1m

Writes SAVE_DIR/results.json, best.pt and last.pt, logs to Weights & Biases, and prints as its last line
`best epoch N: HR@10 h NDCG@10 n`.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dataloader
from evaluate import evaluate, evaluate_full, item_names, load_checkpoint, recommend
from model import MODELS, NCF, load_pretrained
from optim import LazyAdam
from utils import Parser, atomic_open, atomic_path, resolve_device, run_cli

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
              "rmsprop": torch.optim.RMSprop}
SPARSE_OPTIMIZERS = {"adam": LazyAdam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
SHOWN_PLAYLISTS = 3  # playlists whose top-K recommendations are logged at every evaluation
RESUMABLE_FLAGS = ("epochs", "gpu", "threads", "wandb", "log_model", "patience", "resume")  # may differ from the checkpoint's on --resume


def parse_args(argv=None):
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
    p.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=True,
                   help="update only the embedding rows in each batch (lazy Adam; with --l2 0 and adam, sgd or "
                        "adagrad); --no-sparse: the seed's dense update of every row at every step")
    p.add_argument("--gpu", default="0", help="CUDA index (or list like 2,3; the first is used), or cpu")
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
    p.add_argument("--save_dir", default=None, help="where results.json and checkpoints go (default: runs/DATASET)")
    p.add_argument("--resume", default=None, help="last.pt to continue from (its configuration is used)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="auto: online when wandb credentials exist, offline otherwise")
    p.add_argument("--wandb_project", default="recommendation")
    p.add_argument("--log_model", action="store_true", help="upload best.pt to wandb as a model artifact")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (for GPUs)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (one is fastest for small batches, and robust on a busy machine)")
    p.add_argument("--log_every", type=int, default=10, help="log the training loss every this many steps")
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "latent_dim_mf", "num_layers", "num_neg", "topk", "threads", "log_every"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("patience", "l2"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag} must not be negative, got {getattr(args, flag)}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        p.error(f"--lr must be a positive number, got {args.lr}")
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


def start_wandb(args, data, run_id):
    """A wandb run (or None when disabled); `auto` is online with credentials, offline otherwise."""
    if args.wandb == "disabled":
        return None
    import wandb
    mode = args.wandb if args.wandb != "auto" else ("online" if wandb_credentials_present() else "offline")
    config = dict(vars(args), num_users=data.num_users, num_items=data.num_items,
                  num_train=len(data.train_users), num_test=len(data.test.users))
    run = wandb.init(project=args.wandb_project, config=config, mode=mode, dir=args.save_dir, id=run_id,
                     resume="allow" if run_id else None, settings=wandb.Settings(silent=True))
    run.define_metric("epoch")
    for key in ("test/*", "val/*", "epoch_loss", "train_seconds", "eval_seconds", "samples_per_second"):
        run.define_metric(key, step_metric="epoch")
    return run


def uses_sparse_updates(args):
    """Whether embedding gradients are sparse: asked for, and the optimizer and weight decay allow it."""
    if args.sparse and (args.l2 > 0 or args.optim not in SPARSE_OPTIMIZERS):
        print(f"note: dense embedding updates, as --optim {args.optim} with --l2 {args.l2} needs them")
    return args.sparse and args.l2 == 0 and args.optim in SPARSE_OPTIMIZERS


def make_optimizer(model, args, sparse):
    betas = {"betas": (args.beta1, args.beta2)} if args.optim == "adam" else {}
    if sparse:
        return SPARSE_OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, **betas)
    return OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, weight_decay=args.l2, **betas)


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


def train_epoch(model, optimizer, data, args, epoch, run, global_step):
    """One pass over the epoch's positives and fresh negatives; returns (mean loss, steps taken)."""
    users, items, labels = dataloader.epoch_samples(data, args.num_neg, args.seed, epoch)
    num_samples = len(users)
    model.train()
    total_loss = torch.zeros((), device=data.device)
    window_loss = torch.zeros((), device=data.device)
    started = time.perf_counter()
    bar = tqdm(total=num_samples, desc=f"epoch {epoch}", unit="sample", unit_scale=True, leave=False,
               disable=not sys.stdout.isatty())
    step = 0
    for step, (u, i, y) in enumerate(dataloader.batches([users, items, labels], args.batch_size), 1):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(u, i)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        window_loss += loss.detach()
        if step % args.log_every == 0:
            mean = window_loss.item() / args.log_every
            window_loss.zero_()
            done = min(step * args.batch_size, num_samples)
            if run is not None:
                run.log({"train/loss": mean, "epoch": epoch - 1 + done / num_samples}, step=global_step + step)
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{mean:.4f}", samples_per_s=f"{done / (time.perf_counter() - started):,.0f}")
    bar.close()
    return total_loss.item() / num_samples, step


def main(argv=None):
    args = parse_args(argv)
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        overrides = {flag: getattr(args, flag) for flag in RESUMABLE_FLAGS}
        args.__dict__.update(checkpoint["config"])
        args.__dict__.update(overrides)
        print(f"resuming {args.resume} after epoch {checkpoint['epoch']} with its configuration")
    if args.pretrain:
        args.dataset = args.dataset or default_dataset(args.data_dir)
        save_dir = args.save_dir or os.path.join("runs", args.dataset)
        for stage in ("gmf", "mlp"):
            print(f"pretraining {stage.upper()} into {os.path.join(save_dir, stage)}")
            train(argparse.Namespace(**dict(vars(args), model=stage, pretrain=False,
                                            save_dir=os.path.join(save_dir, stage))))
        print(f"training NeuMF from the pretrained GMF and MLP into {save_dir}")
        args = argparse.Namespace(**dict(vars(args), pretrain=False, save_dir=save_dir,
                                         pretrain_gmf=os.path.join(save_dir, "gmf", "best.pt"),
                                         pretrain_mlp=os.path.join(save_dir, "mlp", "best.pt")))
    train(args, checkpoint)


def train(args, checkpoint=None):
    """Train and evaluate one model as `args` says (from scratch, or continuing `checkpoint`); write the outputs."""
    device = resolve_device(args.gpu)
    torch.set_num_threads(args.threads)
    if args.dataset is None:
        args.dataset = default_dataset(args.data_dir)
    args.save_dir = args.save_dir or os.path.join("runs", args.dataset)
    torch.manual_seed(args.seed)
    data = dataloader.load(args.data_dir, args.dataset, device, args.exclude_test_neg)
    print(f"{args.dataset}: {data.num_users:,} users x {data.num_items:,} items, {len(data.train_users):,} training "
          f"pairs, {len(data.test.users):,} test users, {data.test.items.shape[1] - 1} negatives each"
          + (", with validation" if data.val is not None else "") + f"; device {device}")

    sparse = uses_sparse_updates(args)
    model = NCF(data.num_users, data.num_items, args.latent_dim_mf, args.num_layers, args.model, sparse).to(device)
    if args.pretrain_gmf and checkpoint is None:
        gmf, mlp = load_checkpoint(args.pretrain_gmf, device), load_checkpoint(args.pretrain_mlp, device)
        load_pretrained(model, gmf["model"], mlp["model"])
    optimizer = make_optimizer(model, args, sparse)
    history, best, start_epoch, global_step, run_id = [], None, 1, 0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        history, best, global_step, run_id = (checkpoint["history"], checkpoint["best"],
                                              checkpoint["global_step"], checkpoint["wandb_id"])
        start_epoch = checkpoint["epoch"] + 1
    os.makedirs(args.save_dir, exist_ok=True)
    run = start_wandb(args, data, run_id)
    if run is not None:
        import wandb
    selection = "val" if data.val is not None else "test"
    score = (lambda candidates: evaluate(model, candidates, args.topk)) if args.eval == "sampled" else \
        (lambda candidates: evaluate_full(model, data, candidates, args.topk))
    k = args.topk
    catalog = item_names(data.meta, range(data.num_items))
    columns = ["epoch", "playlist", "rank", "song_id", "score"] + [f for f in catalog[0] if f != "id"]
    best_recommendations = checkpoint.get("recommendations", []) if checkpoint else []

    for epoch in range(start_epoch, args.epochs + 1):
        started = time.perf_counter()
        loss, steps = train_epoch(model, optimizer, data, args, epoch, run, global_step)
        train_seconds = time.perf_counter() - started
        global_step += steps
        if not math.isfinite(loss):
            print(f"error: the training loss became {loss} in epoch {epoch}; stopping. The last good checkpoint is "
                  f"{os.path.join(args.save_dir, 'last.pt')} (try a smaller --lr)", file=sys.stderr)
            sys.exit(1)
        started = time.perf_counter()
        hr, ndcg = score(data.test)
        val_hr, val_ndcg = score(data.val) if data.val is not None else (None, None)
        eval_seconds = time.perf_counter() - started
        samples = len(data.train_users) * (1 + args.num_neg)
        record = {"epoch": epoch, "loss": loss, "hr": hr, "ndcg": ndcg, "train_seconds": train_seconds,
                  "eval_seconds": eval_seconds, "samples_per_second": samples / train_seconds}
        if data.val is not None:
            record.update(val_hr=val_hr, val_ndcg=val_ndcg)
        history.append(record)
        print(f"epoch {epoch} loss {loss:.4f} HR@{k} {hr:.4f} NDCG@{k} {ndcg:.4f}"
              + (f" (val HR@{k} {val_hr:.4f} NDCG@{k} {val_ndcg:.4f})" if data.val is not None else "")
              + f" train {train_seconds:.1f}s eval {eval_seconds:.1f}s")
        selected = val_ndcg if data.val is not None else ndcg
        improved = best is None or selected > best["selected"]
        recommendations = recommendation_rows(model, data, catalog, k)
        if improved:
            best = {"epoch": epoch, "hr": hr, "ndcg": ndcg, "selected": selected}
            best_recommendations = recommendations
        if run is not None:
            logged = {"epoch": epoch, "epoch_loss": loss, f"test/hr@{k}": hr, f"test/ndcg@{k}": ndcg,
                      "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                      "samples_per_second": record["samples_per_second"]}
            if data.val is not None:
                logged.update({f"val/hr@{k}": val_hr, f"val/ndcg@{k}": val_ndcg})
            logged["recommendations"] = wandb.Table(columns=columns, data=[[epoch, *r] for r in recommendations])
            run.log(logged, step=global_step)
            run.summary.update({"best_epoch": best["epoch"], f"best/hr@{k}": best["hr"],
                                f"best/ndcg@{k}": best["ndcg"]})
        state = dict(config=vars(args), model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                     rng=torch.get_rng_state(), history=history, best=best, global_step=global_step,
                     recommendations=best_recommendations, wandb_id=run.id if run is not None else None)
        if improved:
            save_checkpoint(os.path.join(args.save_dir, "best.pt"), **state)
        save_checkpoint(os.path.join(args.save_dir, "last.pt"), **state)
        if args.patience and epoch - best["epoch"] >= args.patience:
            print(f"no better {selection} NDCG@{k} for {args.patience} epochs: stopping early")
            break

    results = {"best_epoch": best["epoch"], "hr": best["hr"], "ndcg": best["ndcg"], "selection": selection,
               "protocol": args.eval, "history": history, "config": vars(args)}
    with atomic_open(os.path.join(args.save_dir, "results.json")) as f:
        json.dump(results, f, indent=1)
    write_results_md(os.path.join(args.save_dir, "results.md"), args, history, best, selection, columns,
                     best_recommendations)
    if run is not None:
        if args.log_model:
            artifact = wandb.Artifact(f"{args.model}-{args.dataset}", type="model", metadata=results["config"])
            artifact.add_file(os.path.join(args.save_dir, "best.pt"))
            run.log_artifact(artifact)
        run.finish()
    print(f"best epoch {best['epoch']}: HR@{k} {best['hr']:.4f} NDCG@{k} {best['ndcg']:.4f}")


if __name__ == "__main__":
    run_cli(main)
