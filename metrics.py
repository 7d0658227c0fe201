"""HR@K and NDCG@K from ranks, batched, on any device: sampled candidates (column 0 is the held-out item) and full
ranking. (The Kakao Arena's playlist-continuation score is in arena.py.)"""
import torch


def held_out_rank(scores):
    """0-based rank of column 0 among the row's candidates. Ties and NaN count against the held-out item."""
    return (~(scores[:, 1:] < scores[:, :1])).sum(dim=1)


def hit_ratio_from_ranks(ranks, k):
    """HR@K: the share of rows whose held-out item ranks (0-based `ranks`) in the top K."""
    return (ranks < k).double().mean().item()


def ndcg_from_ranks(ranks, k):
    """NDCG@K with one relevant item: mean of 1/log2(rank + 1) (1-based rank) when it ranks in the top K, else 0."""
    gains = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gains, torch.zeros_like(gains)).mean().item()


def full_rank(scores, held_out, seen_rows, seen_items):
    """0-based rank of each row's held-out item among all items, the row's seen items excluded.

    scores [rows, items]; held_out [rows]; (seen_rows, seen_items) index the seen (row, item) pairs to exclude.
    Ties and NaN count against the held-out item.
    """
    held_out_scores = scores.gather(1, held_out[:, None])
    beaten = ~(scores < held_out_scores)
    beaten[seen_rows, seen_items] = False
    beaten.scatter_(1, held_out[:, None], False)
    return beaten.sum(dim=1)


