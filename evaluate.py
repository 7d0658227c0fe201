"""Score a model on held-out items (sampled candidates or full ranking), in batches; CLI: score a saved checkpoint.

    python3 evaluate.py --checkpoint runs/NAME/best.pt [--eval full] [--split val]
"""
import os
import pickle
import zipfile

import torch

import dataloader
from metrics import full_rank, held_out_rank, hit_ratio_from_ranks, ndcg_from_ranks
from model import NCF
from utils import InputError, Parser, resolve_device, run_cli


@torch.no_grad()
def sampled_ranks(model, candidates, batch_pairs=1 << 18):
    """0-based rank of each row's held-out item among its candidates, scored `batch_pairs` pairs at a time."""
    was_training = model.training
    model.eval()
    rows_per_batch = max(1, batch_pairs // candidates.items.shape[1])
    ranks = []
    for users, items in dataloader.batches([candidates.users, candidates.items], rows_per_batch):
        scores = model(users[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape).float()
        # The NCF paper's ML-1M file lists some held-out items among their own negatives: not a negative.
        scores[:, 1:].masked_fill_(items[:, 1:] == items[:, :1], float("-inf"))
        ranks.append(held_out_rank(scores))
    model.train(was_training)
    return torch.cat(ranks)


@torch.no_grad()
def full_ranks(model, data, candidates, batch_pairs=1 << 22):
    """0-based rank of each row's held-out item among all items the user has not interacted with in training."""
    was_training = model.training
    model.eval()
    all_items = torch.arange(data.num_items, device=data.device)
    rows_per_batch = max(1, batch_pairs // data.num_items)
    ranks = []
    for users, held_out in dataloader.batches([candidates.users, candidates.items[:, 0]], rows_per_batch):
        scores = model(users.repeat_interleave(data.num_items), all_items.repeat(len(users)))
        begin, end = data.seen_indptr[users], data.seen_indptr[users + 1]
        lengths = end - begin
        seen_rows = torch.arange(len(users), device=data.device).repeat_interleave(lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        offsets = torch.arange(int(lengths.sum()), device=data.device) - starts.repeat_interleave(lengths)
        seen_items = data.seen_items[begin.repeat_interleave(lengths) + offsets]
        ranks.append(full_rank(scores.view(len(users), -1).float(), held_out, seen_rows, seen_items))
    model.train(was_training)
    return torch.cat(ranks)


def evaluate(model, candidates, k=10):
    """(HR@k, NDCG@k) over `candidates` (column 0 the held-out item), scored in batches."""
    ranks = sampled_ranks(model, candidates)
    return hit_ratio_from_ranks(ranks, k), ndcg_from_ranks(ranks, k)


def evaluate_full(model, data, candidates, k=10):
    """(HR@k, NDCG@k) with the held-out item ranked among all items unseen in training."""
    ranks = full_ranks(model, data, candidates)
    return hit_ratio_from_ranks(ranks, k), ndcg_from_ranks(ranks, k)


def load_checkpoint(path, device="cpu"):
    """A checkpoint written by main.py, loaded with weights_only=True; a one-line error if it is missing or corrupt."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:120]})")
    if not isinstance(checkpoint, dict) or not {"config", "model", "epoch"} <= checkpoint.keys():
        raise InputError(f"{path}: not a checkpoint written by main.py")
    return checkpoint


def model_from_checkpoint(checkpoint, data):
    config = checkpoint["config"]
    model = NCF(data.num_users, data.num_items, config["latent_dim_mf"], config["num_layers"], config["model"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise InputError(f"checkpoint does not fit data set {data.name!r} ({str(e).splitlines()[0][:120]})")
    return model.to(data.device)


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by main.py")
    parser.add_argument("--eval", choices=["sampled", "full"], default="sampled",
                        help="sampled: held-out item among its 99 negatives; full: among all unseen items")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="which held-out items to score")
    parser.add_argument("--k", type=int, default=None, help="cut-off K (default: the run's --topk)")
    parser.add_argument("--gpu", default="0", help="CUDA index, or cpu")
    args = parser.parse_args()
    device = resolve_device(args.gpu)
    checkpoint = load_checkpoint(args.checkpoint, device)
    config = checkpoint["config"]
    k = args.k or config["topk"]
    if k < 1:
        parser.error("--k must be at least 1")
    data = dataloader.load(config["data_dir"], config["dataset"], device)
    candidates = data.test if args.split == "test" else data.val
    if candidates is None:
        raise InputError(f"--split val: data set {data.name!r} has no validation split (split.py --val)")
    model = model_from_checkpoint(checkpoint, data)
    score = evaluate(model, candidates, k) if args.eval == "sampled" else evaluate_full(model, data, candidates, k)
    print(f"{args.checkpoint} (epoch {checkpoint['epoch']}, {args.eval} {args.split}): "
          f"HR@{k} {score[0]:.4f} NDCG@{k} {score[1]:.4f}")


if __name__ == "__main__":
    run_cli(main)
