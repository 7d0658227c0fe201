"""Ranks and HR@K / NDCG@K for any scorer (a trained model or a baseline with a candidate_scorer), in batches:
the held-out item among its sampled candidates or among every unseen item (full ranking), split across ranks;
the top-K items for a user and the items nearest to an item."""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import dataloader
from metrics import full_rank, held_out_rank, hit_ratio_from_ranks, ndcg_from_ranks
from model import checked_scorer


@contextmanager
def evaluating(model):
    """The model in eval mode inside the block; its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sampled_ranks(model, candidates, batch_pairs=1 << 13):
    """0-based rank of each row's held-out item among its candidates, scored `batch_pairs` pairs at a time."""
    rows_per_batch = max(1, batch_pairs // candidates.items.shape[1])
    ranks = []
    with evaluating(model):
        score = checked_scorer(model)
        for users, items in dataloader.batches([candidates.users, candidates.items], rows_per_batch):
            scores = score(users, items).float()
            # The NCF paper's ML-1M file lists some held-out items among their own negatives: not a negative.
            scores[:, 1:].masked_fill_(items[:, 1:] == items[:, :1], float("-inf"))
            ranks.append(held_out_rank(scores))
    return torch.cat(ranks)


@torch.no_grad()
def full_ranks(model, data, candidates, batch_pairs=1 << 20):
    """0-based rank of each row's held-out item among all items the user has not interacted with in training."""
    rows_per_batch = max(1, batch_pairs // data.num_items)
    ranks = []
    with evaluating(model):
        score = checked_scorer(model)
        for users, held_out in dataloader.batches([candidates.users, candidates.items[:, 0]], rows_per_batch):
            scores = score(users).float()
            seen_indptr, seen_items = dataloader.csr_rows(data.seen_indptr, data.seen_items, users)
            ranks.append(full_rank(scores, held_out, dataloader.row_ids(seen_indptr), seen_items))
    return torch.cat(ranks)


def score(model, data, candidates, k=10, protocol="sampled", ctx=None):
    """(HR@k, NDCG@k) over `candidates` (column 0 the held-out item), scored in batches, with the held-out item
    ranked among the row's candidates (protocol "sampled") or among all items unseen in training in `data`
    ("full"). With `ctx` (a distributed.Context) every rank ranks every world_size-th row, and all get the
    figures of all rows."""
    if ctx is not None and ctx.world_size > 1:
        candidates = dataloader.Candidates(candidates.users[ctx.rank::ctx.world_size],
                                           candidates.items[ctx.rank::ctx.world_size])
    ranks = sampled_ranks(model, candidates) if protocol == "sampled" else full_ranks(model, data, candidates)
    if ctx is not None:
        ranks = ctx.gather_rows(ranks)
    return hit_ratio_from_ranks(ranks, k), ndcg_from_ranks(ranks, k)


def evaluate(model, candidates, k=10):
    """(HR@k, NDCG@k) of the held-out items among their sampled candidates."""
    return score(model, None, candidates, k)


def evaluate_full(model, data, candidates, k=10):
    """(HR@k, NDCG@k) with the held-out item ranked among all items unseen in training."""
    return score(model, data, candidates, k, "full")


def user_items(data, user):
    """Every item of user index `user`: its training items in file order, then its validation and test items."""
    seen = data.seen_items[data.seen_indptr[user]:data.seen_indptr[user + 1]]
    return torch.cat([seen, data.test.items[data.test.users == user, 0]])


@torch.no_grad()
def recommend(model, data, user, k=10):
    """(items, scores): the k best-scored items for user index `user` among those it has no interaction with
    (training, validation or test), best first; fewer when fewer are left. Scores are the model's logits."""
    with evaluating(model):
        scores = checked_scorer(model)(torch.tensor([user], device=data.device))[0].float()
    own = torch.zeros(data.num_items, dtype=torch.bool, device=data.device)
    own[user_items(data, user)] = True
    top = scores.masked_fill(own, float("-inf")).topk(min(k, int((~own).sum())))
    return top.indices, top.values


@torch.no_grad()
def similar_items(model, item, k=10):
    """(items, similarities): the k items nearest to item index `item` by cosine similarity of the learned item
    embeddings (GMF and MLP ones each L2-normalised, then concatenated), the item itself excluded."""
    parts = [F.normalize(getattr(model, name).weight, dim=1)
             for name in ("item_gmf", "item_mlp") if hasattr(model, name)]
    vectors = F.normalize(torch.cat(parts, dim=1), dim=1)
    similarity = vectors @ vectors[item]
    similarity[item] = float("-inf")
    top = similarity.topk(min(k, len(vectors) - 1))
    return top.indices, top.values
