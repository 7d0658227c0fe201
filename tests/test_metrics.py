import math

import torch

from metrics import full_rank, held_out_rank, hit_ratio_from_ranks, ndcg_from_ranks


def hit_ratio(scores, k=10):
    return hit_ratio_from_ranks(held_out_rank(scores), k)


def ndcg(scores, k=10):
    return ndcg_from_ranks(held_out_rank(scores), k)


def scores_with_rank(rank, candidates=100):
    """One row whose held-out item (column 0) has the given 1-based rank, no ties."""
    negatives = torch.arange(candidates - 1, 0, -1, dtype=torch.float)  # 99, 98, ..., 1
    held_out = negatives[rank - 1] + 0.5 if rank > 1 else negatives[0] + 1
    return torch.cat([torch.tensor([held_out]), negatives])[None]


def test_rank_1_10_11():
    for rank, hit, gain in [(1, 1.0, 1.0), (10, 1.0, 1 / math.log2(11)), (11, 0.0, 0.0)]:
        scores = scores_with_rank(rank)
        assert held_out_rank(scores).item() == rank - 1
        assert hit_ratio(scores, 10) == hit
        assert math.isclose(ndcg(scores, 10), gain)


def test_ties_and_nan_count_against_the_held_out_item():
    tied = torch.tensor([[0.5, 0.5, 0.1, 0.9]])
    assert held_out_rank(tied).item() == 2
    assert hit_ratio(tied, 2) == 0.0 and hit_ratio(tied, 3) == 1.0
    assert math.isclose(ndcg(tied, 3), 1 / math.log2(4))
    assert held_out_rank(torch.tensor([[float("nan"), 0.1, 0.2]])).item() == 2
    assert held_out_rank(torch.tensor([[0.5, float("nan"), 0.2]])).item() == 1


def test_batched_means_and_other_k():
    scores = torch.cat([scores_with_rank(r) for r in (1, 3, 5, 20)])
    assert hit_ratio(scores, 1) == 0.25
    assert hit_ratio(scores, 5) == 0.75
    assert hit_ratio(scores, 20) == 1.0
    expected = (1 + 1 / math.log2(4) + 1 / math.log2(6)) / 4
    assert math.isclose(ndcg(scores, 5), expected)
    assert math.isclose(ndcg(scores, 4), (1 + 1 / math.log2(4)) / 4)


def test_full_rank_excludes_seen_items_and_counts_ties():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                           [0.1, 0.3, 0.3, 0.9, 0.2]])
    held_out = torch.tensor([2, 1])
    # row 0 has seen items 0 and 1 (scored above the held-out item); row 1 has seen item 3.
    seen_rows, seen_items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 3])
    ranks = full_rank(scores, held_out, seen_rows, seen_items)
    assert ranks.tolist() == [0, 1]  # row 1: item 2 ties with the held-out item and counts against it
    assert full_rank(scores, held_out, seen_rows[:0], seen_items[:0]).tolist() == [2, 2]
