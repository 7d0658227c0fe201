"""Full-ranking evaluation against brute force: score every item one user at a time (in float64), drop the user's
training and validation items, count the items scoring at least as high as the held-out one (ties against it)."""
import copy
import os

import numpy as np
import pytest
import torch

import dataloader
from conftest import write_split
from scoring import evaluate_full, full_ranks
from model import NCF


def read_pairs(path):
    return np.loadtxt(path, dtype=np.int64, usecols=(0, 1), ndmin=2)


def make_model(data, kind, zero_items=()):
    """A randomly initialised model with embeddings of std 1, so that scores lie far apart compared with float32
    rounding. Items in `zero_items` get zero item embeddings: a GMF model scores them all exactly its bias (ties)."""
    torch.manual_seed(0)
    model = NCF(data.num_users, data.num_items, 8, 2, kind)
    with torch.no_grad():
        for embedding in model.embeddings():
            embedding.weight.normal_()
        for embedding in (model.item_gmf, model.item_mlp) if kind == "neumf" else (model.item_gmf,):
            embedding.weight[list(zero_items)] = 0.0
    return model


def brute_force_ranks(model, data_dir, name, part):
    """0-based rank of each held-out item of NAME.PART.rating among the items its user has no training or
    validation interaction with, read from the split files directly."""
    seen = {}
    for suffix in ("train.rating", "val.rating"):
        path = os.path.join(data_dir, f"{name}.{suffix}")
        if os.path.exists(path):
            for user, item in read_pairs(path):
                seen.setdefault(user, set()).add(item)
    reference = copy.deepcopy(model).double().eval()
    num_items = reference.item_gmf.num_embeddings
    ranks = []
    with torch.no_grad():
        for user, held_out in read_pairs(os.path.join(data_dir, f"{name}.{part}.rating")):
            scores = reference(torch.full((num_items,), int(user)), torch.arange(num_items)).numpy()
            competitors = np.ones(num_items, bool)
            competitors[list(seen.get(user, ()))] = False
            competitors[held_out] = False
            ranks.append(int((competitors & ~(scores < scores[held_out])).sum()))
    return ranks


@pytest.mark.parametrize("val", [False, True])
@pytest.mark.parametrize("kind", ["neumf", "gmf"])
def test_full_ranks_equal_brute_force(tmp_path, val, kind):
    data_dir, name = write_split(tmp_path, val=val)
    data = dataloader.load(data_dir, name)
    held_out = data.test.items[:, 0].unique()
    # GMF: tie a third of the items, among them held-out ones, exactly.
    zero_items = sorted(set(range(0, data.num_items, 3)) | set(held_out[:20].tolist())) if kind == "gmf" else ()
    model = make_model(data, kind, zero_items)
    for part, candidates in [("test", data.test)] + ([("val", data.val)] if val else []):
        expected = brute_force_ranks(model, data_dir, name, part)
        assert full_ranks(model, data, candidates).tolist() == expected
        if kind == "gmf":
            tied = np.isin(candidates.items[:, 0].numpy(), zero_items)
            assert tied.any() and (np.array(expected)[tied] >= 90).all()  # ~100 tied items outrank each of them
        ranks = torch.tensor(expected, dtype=torch.float64)
        for k in (1, 10, 50):
            hr, ndcg = evaluate_full(model, data, candidates, k)
            assert hr == pytest.approx((ranks < k).double().mean().item())
            assert ndcg == pytest.approx(torch.where(ranks < k, 1 / torch.log2(ranks + 2), 0.0).mean().item())


def test_chunked_and_unchunked_full_ranking_agree(tmp_path):
    data_dir, name = write_split(tmp_path, val=True)
    data = dataloader.load(data_dir, name)
    model = make_model(data, "neumf")
    whole = full_ranks(model, data, data.test, batch_pairs=1 << 30)
    assert whole.unique().numel() > 10  # a spread of ranks, not a degenerate model
    for batch_pairs in (1, data.num_items * 7 + 3):  # one user per chunk; uneven chunks with a short last one
        assert torch.equal(full_ranks(model, data, data.test, batch_pairs=batch_pairs), whole)
