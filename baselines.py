"""Non-neural baselines, scored by scoring.py's code like the neural models: most popular, item-kNN (cosine with
shrink, each item's top-k neighbours), EASE^R (Steck, WWW 2019: the closed-form linear item-item model) and iALS
(Hu et al. 2008, with Rendle et al. 2022's frequency-scaled regularisation: exact alternating least squares).

    python3 baselines.py --data_dir data --dataset ml-1m --model itemknn --tune
    python3 baselines.py --model ease --l2 500 --eval full        # the built-in sample (or the Melon split)
    python3 baselines.py --data_dir data --dataset ml-1m --model ials --dim 64 --tune   # l2, unobserved on validation

fit(name, data, **params) returns an nn.Module of buffers only. Its candidate_scorer() follows model.NCF's contract
(score(users [rows], items [rows, candidates] or None for every item) -> scores [rows, candidates]), scoring a user
from its training items; history_scores(indptr, items) scores any item sets given in CSR form (playlists that were
not training users). --tune chooses the parameters on validation data (the split's own, else one training item per
user held out with 99 sampled negatives), never on the test set, then fits on all training pairs.

EASE^R holds a dense items x items matrix and inverts one: 2 x items^2 x 4 bytes at the peak (10.3 GB for Melon's
35,919 songs) and about items^3 operations. Item-kNN keeps k neighbours an item and builds the co-occurrence counts
a block of items at a time, never items^2 at once: by a dense product where the user x item matrix is small (ML-1M),
else from the users' item pairs (as many as the sum of squared user lengths: a few hundred million on Melon).
iALS solves a dim x dim system per user and per item each epoch (batched Cholesky), about 2 x pairs x dim^2
operations to build them: a few seconds an epoch at dim 64 on ML-1M with one thread.
"""
import dataclasses
import itertools
import json
import math
import os
import time

import torch
from torch import nn

import dataloader
from scoring import score
from dataloader import csr_rows, row_ids
from runs import check_results_dir, results_dir, run_provenance
from utils import MAX_THREADS, Parser, atomic_open, check_output, run_cli

NAMES = ("pop", "itemknn", "ease", "ials", "playlistknn")
DEFAULTS = {"pop": {}, "itemknn": {"neighbours": 100, "shrink": 10.0, "alpha": 0.5, "power": 1.0},
            "ease": {"l2": 500.0},
            "ials": {"dim": 64, "l2": 0.007, "unobserved": 0.3, "epochs": 16},
            "playlistknn": {"neighbours": 300, "alpha": 0.5, "power": 1.0, "idf": 0.0}}
GRIDS = {"pop": {}, "itemknn": {"neighbours": [20, 50, 100, 200, 300, 500], "shrink": [0.0, 10.0, 100.0, 1000.0]},
         "ease": {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]},
         "ials": {"l2": [0.003, 0.007, 0.015], "unobserved": [0.1, 0.3, 1.0]},  # dim and epochs: given
         "playlistknn": {"neighbours": [100, 300], "alpha": [0.5, 0.7], "power": [1.0, 2.0], "idf": [0.0, 0.5]}}
PARAMETERS = ("neighbours", "shrink", "l2", "dim", "unobserved", "epochs")  # the command line's, of any baseline
MAX_PADDED = 1 << 22  # values of the padded [rows, length, dim] factors iALS gathers at once
MAX_PAIRS = 1 << 24  # item pairs counted at once when building co-occurrence counts (8 bytes an index)
MAX_BLOCK = 1 << 26  # co-occurrence counts held at once (4 bytes each)
DENSE_SPEEDUP = 1000  # how much faster a dense matrix product is per multiply-add than counting one item pair


# --- item sets in CSR form ---

def dense_rows(indptr, items, num_items):
    """[rows, num_items] float32: 1 where the row holds the item."""
    rows = torch.zeros(len(indptr) - 1, num_items, device=items.device)
    rows[row_ids(indptr), items] = 1.0
    return rows


def distinct_sets(indptr, items, num_items):
    """(indptr, items) of the same item sets in CSR form, each set's items distinct and sorted."""
    keys = torch.unique(row_ids(indptr) * num_items + items)
    indptr = torch.zeros_like(indptr)
    torch.cumsum(torch.bincount(keys // num_items, minlength=len(indptr) - 1), 0, out=indptr[1:])
    return indptr, keys % num_items


def training_csr(data):
    """(indptr [num_users + 1], items) of each user's distinct training items, sorted."""
    indptr = torch.zeros(data.num_users + 1, dtype=torch.int64, device=data.device)
    torch.cumsum(torch.bincount(data.train_users, minlength=data.num_users), 0, out=indptr[1:])
    return distinct_sets(indptr, data.train_items, data.num_items)  # train_users is sorted


def transpose_csr(indptr, items, num_items):
    """(indptr [num_items + 1], rows) of the same matrix by item: the rows holding each item, sorted."""
    keys = torch.sort(items * (len(indptr) - 1) + row_ids(indptr)).values
    item_indptr = torch.zeros(num_items + 1, dtype=torch.int64, device=items.device)
    torch.cumsum(torch.bincount(items, minlength=num_items), 0, out=item_indptr[1:])
    return item_indptr, keys % (len(indptr) - 1)


def cooccurrence_blocks(indptr, items, num_items):
    """(begin, counts [end - begin, num_items]) blocks of C = X^T X, X the binary user x item matrix of the CSR
    (C[i, j]: the users holding both items i and j), counted from each user's item pairs, a block of items at a
    time so that neither the pairs (MAX_PAIRS) nor the block (MAX_BLOCK) grow with items^2."""
    max_rows = max(1, MAX_BLOCK // num_items)
    num_users = len(indptr) - 1
    if num_users * num_items <= MAX_BLOCK and num_users * num_items ** 2 <= DENSE_SPEEDUP * int(
            (indptr.diff() ** 2).sum()):  # a dense product is this much faster per operation than counting pairs
        matrix = dense_rows(indptr, items, num_items)
        for begin in range(0, num_items, max_rows):
            yield begin, matrix[:, begin:begin + max_rows].T @ matrix
        return
    item_indptr, item_users = transpose_csr(indptr, items, num_items)
    per_item = torch.zeros(num_items, dtype=torch.int64, device=items.device)  # pairs of each item's users
    per_item.index_add_(0, row_ids(item_indptr), indptr.diff()[item_users])
    pairs = torch.zeros(num_items + 1, dtype=torch.int64, device=items.device)
    torch.cumsum(per_item, 0, out=pairs[1:])
    begin = 0
    while begin < num_items:
        end = int(torch.searchsorted(pairs, pairs[begin] + MAX_PAIRS, right=True)) - 1
        end = min(max(end, begin + 1), begin + max_rows, num_items)
        users = item_users[item_indptr[begin]:item_indptr[end]]
        block_rows = row_ids(item_indptr[begin:end + 1] - item_indptr[begin])
        user_indptr, partners = csr_rows(indptr, items, users)
        keys = block_rows.repeat_interleave(user_indptr.diff()) * num_items + partners
        counts = torch.zeros((end - begin) * num_items, device=items.device)
        yield begin, counts.index_add_(0, keys, torch.ones(len(keys), device=items.device)).view(-1, num_items)
        begin = end


# --- the baselines ---

class Baseline(nn.Module):
    """Scores a user from its training items (kept as a CSR buffer); subclasses give history_scores and may give a
    faster candidate_scores."""

    def __init__(self, indptr, items, num_items):
        super().__init__()
        self.num_items = num_items
        self.register_buffer("user_indptr", indptr)
        self.register_buffer("user_items", items)

    def history_scores(self, indptr, items):
        """Scores [rows, num_items] of every item for any item sets (indptr [rows + 1], items) in CSR form."""
        return self.all_scores(*distinct_sets(indptr, items, self.num_items))

    def all_scores(self, indptr, items):
        """history_scores of item sets whose items are distinct and sorted."""
        raise NotImplementedError

    def candidate_scores(self, indptr, items, candidates):
        """Scores [rows, candidates] of the items `candidates` [rows, candidates] for distinct, sorted item sets."""
        return self.all_scores(indptr, items).gather(1, candidates)

    def candidate_scorer(self):
        """As model.NCF.candidate_scorer: (users [rows], items [rows, candidates] or None) -> scores."""
        def score_users(users, items=None):
            indptr, history = csr_rows(self.user_indptr, self.user_items, users)
            if items is None:
                return self.all_scores(indptr, history)
            return self.candidate_scores(indptr, history, items)

        return score_users


class Popularity(Baseline):
    """Most popular: every item scored by the number of users holding it in training, whatever the history."""

    def __init__(self, indptr, items, num_items):
        super().__init__(indptr, items, num_items)
        self.register_buffer("counts", torch.bincount(items, minlength=num_items).float())

    def all_scores(self, indptr, items):
        return self.counts.expand(len(indptr) - 1, -1).clone()

    def candidate_scores(self, indptr, items, candidates):
        return self.counts[candidates]


class ItemKNN(Baseline):
    """Item-based kNN (Sarwar et al. 2001; the configuration of Dacrema et al. 2019): the similarity of a held item i
    to an item j is the cosine of their user columns with `shrink` added to the denominator, c_ij / (|i| |j| + shrink);
    each item keeps its `neighbours` most similar items, and a user's score for item j is the sum of j's similarities
    to the user's items among those neighbours. `alpha` and `power` generalise the cosine as Aiolli's Million Song
    Dataset Challenge recommender did (2013): c_ij / (|U_i|^alpha |U_j|^(1 - alpha) + shrink), each raised to `power`
    (alpha 0.5 and power 1: the cosine; alpha 1: the conditional probability P(j | i), which favours popular j)."""

    def __init__(self, indptr, items, num_items, neighbours=100, shrink=10.0, alpha=0.5, power=1.0):
        super().__init__(indptr, items, num_items)
        if neighbours < 1 or shrink < 0 or not 0 <= alpha <= 1 or not power > 0:
            raise ValueError(f"item-kNN: neighbours must be at least 1, shrink not negative, alpha in [0, 1] and power "
                             f"positive, got {neighbours}, {shrink}, {alpha}, {power}")
        k = min(neighbours, num_items - 1)
        users = torch.bincount(items, minlength=num_items).float()
        held_norms, norms = users ** alpha, users ** (1 - alpha)
        neighbour_items = torch.zeros(num_items, k, dtype=torch.int64, device=items.device)
        weights = torch.zeros(num_items, k, device=items.device)
        for begin, counts in cooccurrence_blocks(indptr, items, num_items):
            end = begin + len(counts)
            similarity = counts.div_(norms[begin:end, None] * held_norms + shrink + 1e-6)
            similarity[torch.arange(end - begin), torch.arange(begin, end)] = 0.0  # not its own neighbour
            top = similarity.topk(k, dim=1)
            neighbour_items[begin:end], weights[begin:end] = top.indices, top.values ** power
        self.register_buffer("neighbour_items", neighbour_items)  # [items, k]: row j holds j's neighbours
        self.register_buffer("weights", weights)
        # by neighbour i, the flat positions (j * k + slot) of its entries in neighbour_items: W's rows as a CSR
        reverse_indptr = torch.zeros(num_items + 1, dtype=torch.int64, device=items.device)
        torch.cumsum(torch.bincount(neighbour_items.reshape(-1), minlength=num_items), 0, out=reverse_indptr[1:])
        self.register_buffer("reverse_indptr", reverse_indptr)
        self.register_buffer("reverse_entries", torch.argsort(neighbour_items.reshape(-1), stable=True))

    def all_scores(self, indptr, items):
        # scores = H W, W[i, j] the similarity of neighbour i of j: each held item i adds its row of W (the items
        # having i among their neighbours), so the cost is the rows' items x k, not items x k a row
        pair_indptr, entries = csr_rows(self.reverse_indptr, self.reverse_entries, items)
        rows = row_ids(indptr).repeat_interleave(pair_indptr.diff())
        keys = rows * self.num_items + entries // self.weights.shape[1]
        scores = torch.zeros((len(indptr) - 1) * self.num_items, device=items.device)
        return scores.index_add_(0, keys, self.weights.reshape(-1)[entries]).view(-1, self.num_items)

    def candidate_scores(self, indptr, items, candidates):
        held = dense_rows(indptr, items, self.num_items)
        neighbours = self.neighbour_items[candidates]  # [rows, candidates, k]
        inside = held.gather(1, neighbours.reshape(len(held), -1)).view(neighbours.shape)
        return (self.weights[candidates] * inside).sum(-1)


class EASE(Baseline):
    """EASE^R (Steck 2019): item-item weights B minimising |X - XB|^2 + l2 |B|^2 with a zero diagonal, in closed form:
    P = (X^T X + l2 I)^-1, B = I - P / diag(P); a user's score for item j is the sum of B[i, j] over its items i."""

    def __init__(self, indptr, items, num_items, l2=500.0):
        super().__init__(indptr, items, num_items)
        if not l2 > 0:
            raise ValueError(f"EASE: l2 must be positive, got {l2}")
        gram = torch.empty(num_items, num_items, device=items.device)
        for begin, counts in cooccurrence_blocks(indptr, items, num_items):
            gram[begin:begin + len(counts)] = counts
        gram.diagonal().add_(l2)
        factor = torch.linalg.cholesky(gram)
        del gram
        weights = torch.cholesky_inverse(factor)
        del factor
        weights.div_(-weights.diagonal()).diagonal().zero_()  # -P / diag(P), its diagonal 0: B off the diagonal
        self.register_buffer("item_weights", weights)

    def all_scores(self, indptr, items):
        return dense_rows(indptr, items, self.num_items) @ self.item_weights  # dense: far faster than sparse.mm

    def candidate_scores(self, indptr, items, candidates):
        rows = row_ids(indptr)
        pairs = self.item_weights[items[:, None], candidates[rows]]  # [history entries, candidates]
        return torch.zeros(candidates.shape, device=items.device).index_add_(0, rows, pairs)


def padded_rows(indptr, items, rows):
    """[len(rows), longest] item indices of `rows` of the CSR, padded with -1."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    positions = torch.arange(int(lengths.max()) if len(rows) else 0, device=items.device)
    inside = positions < lengths[:, None]
    return torch.where(inside, items[(starts[:, None] + positions).clamp(max=max(len(items) - 1, 0))], -1)


def least_squares_rows(indptr, items, factors, l2, unobserved):
    """iALS's exact solve of every row of the CSR (indptr, items) given the other side's `factors` [n, dim]: row r's
    embedding x minimises sum_{i in r} (x . f_i - 1)^2 + unobserved sum_{all i} (x . f_i)^2 + l2 (|r| + unobserved
    n) |x|^2, that is (sum_{i in r} f_i f_i^T + unobserved F^T F + l2 (|r| + unobserved n) I) x = sum_{i in r} f_i,
    by batched Cholesky. Rows are taken by length, so that padding them to a block's longest wastes little."""
    num, dim = factors.shape
    gramian = unobserved * (factors.T @ factors)
    padded = torch.cat([factors, factors.new_zeros(1, dim)])  # index -1: a zero row
    lengths = indptr.diff()
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].clamp(min=1)
    solution = factors.new_zeros(len(lengths), dim)
    begin = 0
    while begin < len(order):
        cost = (torch.arange(1, len(order) - begin + 1, device=items.device) * sorted_lengths[begin:]) * dim
        end = begin + max(1, int(torch.searchsorted(cost, MAX_PADDED, right=True)))
        rows = order[begin:end]
        gathered = padded[padded_rows(indptr, items, rows)]  # [rows, longest, dim]
        system = torch.bmm(gathered.transpose(1, 2), gathered).add_(gramian)
        system.diagonal(dim1=1, dim2=2).add_((l2 * (lengths[rows] + unobserved * num)).to(factors.dtype)[:, None])
        solution[rows] = torch.cholesky_solve(gathered.sum(1)[:, :, None], torch.linalg.cholesky(system))[:, :, 0]
        begin = end
    return solution


class IALS(Baseline):
    """iALS (Hu et al. 2008) as revisited by Rendle et al. 2022 (google-research/ials): user and item embeddings W
    and H of size `dim` minimising sum_{(u,i) observed} (w_u . h_i - 1)^2 + unobserved sum_{all (u,i)} (w_u . h_i)^2
    + l2 (sum_u (|I_u| + unobserved |I|) |w_u|^2 + sum_i (|U_i| + unobserved |U|) |h_i|^2) (frequency-scaled
    regularisation), by `epochs` rounds of exact alternating least squares (least_squares_rows: all users given H,
    then all items given W) from N(0, 0.1 / sqrt(dim)), and the users solved once more given the last H. A user's
    score for an item is w_u . h_i; item sets that were not training users (playlists it has never seen) are folded
    in by that same closed-form solve, so a training user's items folded in score as the user does."""

    def __init__(self, indptr, items, num_items, dim=64, l2=0.007, unobserved=0.3, epochs=16, seed=0):
        super().__init__(indptr, items, num_items)
        if dim < 1 or epochs < 1 or not l2 > 0 or not unobserved >= 0:
            raise ValueError(f"iALS: dim and epochs must be at least 1, l2 positive and unobserved not negative, got "
                             f"{dim}, {epochs}, {l2}, {unobserved}")
        self.l2, self.unobserved = l2, unobserved
        generator = torch.Generator().manual_seed(seed)
        item_factors = (torch.randn(num_items, dim, generator=generator) * (0.1 / dim ** 0.5)).to(items.device)
        item_indptr, item_users = transpose_csr(indptr, items, num_items)
        for _ in range(epochs):
            user_factors = least_squares_rows(indptr, items, item_factors, l2, unobserved)
            item_factors = least_squares_rows(item_indptr, item_users, user_factors, l2, unobserved)
        self.register_buffer("item_factors", item_factors)
        self.register_buffer("user_factors", self.fold_in(indptr, items))  # the users' solve given the last H

    def fold_in(self, indptr, items):
        """Embeddings [rows, dim] of item sets in CSR form, each by the users' closed-form solve given the items'."""
        return least_squares_rows(indptr, items, self.item_factors, self.l2, self.unobserved)

    def all_scores(self, indptr, items):
        return self.fold_in(indptr, items) @ self.item_factors.T

    def candidate_scorer(self):
        """As model.NCF.candidate_scorer, from the trained user embeddings."""
        def score_users(users, items=None):
            if items is None:
                return self.user_factors[users] @ self.item_factors.T
            return torch.einsum("rd,rcd->rc", self.user_factors[users], self.item_factors[items])

        return score_users


class PlaylistKNN(Baseline):
    """Playlist-based (user-based) kNN: a set's similarity to a training user is the items they share, each
    weighted |item's users|^-idf, over |set|^alpha |user|^(1 - alpha) (alpha 0.5: the cosine); its `neighbours` most
    similar users count with weight similarity^power, and an item's score is the sum of the weights of the neighbours
    holding it. A training user is never its own neighbour (candidate_scorer, or `exclude` of all_scores)."""

    def __init__(self, indptr, items, num_items, neighbours=300, alpha=0.5, power=1.0, idf=0.0):
        super().__init__(indptr, items, num_items)
        if neighbours < 1 or power <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"playlist-kNN: neighbours must be at least 1, power positive and alpha in [0, 1], got "
                             f"{neighbours}, {power}, {alpha}")
        self.neighbours, self.alpha, self.power = min(neighbours, len(indptr) - 1), alpha, power
        item_indptr, item_users = transpose_csr(indptr, items, num_items)
        self.register_buffer("item_indptr", item_indptr)
        self.register_buffer("item_users", item_users)
        self.register_buffer("item_weights", item_indptr.diff().float().clamp(min=1) ** -idf)
        self.register_buffer("user_norms", indptr.diff().float().clamp(min=1) ** (1 - alpha))

    def nearest(self, indptr, items, exclude=None, progress=None):
        """(users [rows, neighbours], weights [rows, neighbours]) of distinct item sets: each set's nearest training
        users and their weights (0 where the set shares nothing with them), never the user `exclude` [rows] names
        (-1: none); a block of rows at a time, so that no more than MAX_BLOCK similarities are held at once, with
        progress(rows done) after each."""
        num_users = len(self.user_norms)
        users, weights = [], []
        for begin in range(0, len(indptr) - 1, max(1, MAX_BLOCK // num_users)):
            rows = torch.arange(begin, min(begin + max(1, MAX_BLOCK // num_users), len(indptr) - 1),
                                device=items.device)
            block_indptr, block_items = csr_rows(indptr, items, rows)
            pair_indptr, holders = csr_rows(self.item_indptr, self.item_users, block_items)
            keys = row_ids(block_indptr).repeat_interleave(pair_indptr.diff()) * num_users + holders
            similarity = torch.zeros(len(rows) * num_users, device=items.device).index_add_(
                0, keys, self.item_weights[block_items].repeat_interleave(pair_indptr.diff())).view(len(rows), -1)
            similarity /= block_indptr.diff().float().clamp(min=1)[:, None] ** self.alpha * self.user_norms
            if exclude is not None:
                own = exclude[rows] >= 0
                similarity[own.nonzero().squeeze(1), exclude[rows][own]] = 0.0
            top = similarity.topk(self.neighbours, dim=1)
            users.append(top.indices)
            weights.append(top.values ** self.power)
            if progress is not None:
                progress(int(rows[-1]) + 1)
        return torch.cat(users), torch.cat(weights)

    def history_scores(self, indptr, items, exclude=None):
        """As Baseline.history_scores; `exclude` [rows]: the training user each set is (-1: none), not its own
        neighbour."""
        return self.all_scores(*distinct_sets(indptr, items, self.num_items), exclude)

    def all_scores(self, indptr, items, exclude=None):
        return neighbour_sums(*self.nearest(indptr, items, exclude), self.user_indptr, self.user_items,
                              self.num_items)

    def candidate_scorer(self):
        def score_users(users, items=None):
            scores = self.all_scores(*csr_rows(self.user_indptr, self.user_items, users), exclude=users)
            return scores if items is None else scores.gather(1, items)

        return score_users


def neighbour_sums(users, weights, indptr, values, width):
    """[rows, width]: for each row, the sum over its neighbours `users` [rows, k] of their `weights` on each value
    their CSR row (indptr, values < width) holds."""
    counts_indptr, held = csr_rows(indptr, values, users.reshape(-1))
    counts = counts_indptr.diff()
    rows = torch.arange(len(users), device=users.device).repeat_interleave(users.shape[1]).repeat_interleave(counts)
    sums = torch.zeros(len(users) * width, device=users.device)
    return sums.index_add_(0, rows * width + held, weights.reshape(-1).repeat_interleave(counts)).view(-1, width)


MODELS = {"pop": Popularity, "itemknn": ItemKNN, "ease": EASE, "ials": IALS, "playlistknn": PlaylistKNN}


def fit(name, data, **params):
    """The baseline `name` (one of NAMES) fitted on the training pairs of `data` (a dataloader.Data),
    with `params` (the keyword arguments of its class in MODELS) over DEFAULTS."""
    if name not in MODELS:
        raise ValueError(f"unknown baseline {name!r}: one of {', '.join(NAMES)}")
    unknown = params.keys() - DEFAULTS[name].keys()
    if unknown:
        raise ValueError(f"baseline {name}: unknown parameter(s) {', '.join(sorted(unknown))}")
    indptr, items = training_csr(data)
    return MODELS[name](indptr, items, data.num_items, **{**DEFAULTS[name], **params}).eval()


# --- tuning on validation data ---

def validation_split(data, seed=0, negatives=99):
    """`data` with one random training item of each user with at least two held out as its validation item, among
    `negatives` items drawn uniformly from those outside the user's training items; its training pairs without them.
    The test set is neither used nor changed."""
    indptr, items = training_csr(data)
    generator = torch.Generator().manual_seed(seed)
    lengths = indptr.diff()
    users = torch.nonzero(lengths >= 2).squeeze(1)
    picked = indptr[users] + (torch.rand(len(users), generator=generator) * lengths[users]).long()
    keep = torch.ones(len(items), dtype=torch.bool)
    keep[picked] = False
    sampler = dataclasses.replace(data, forbidden=torch.sort(row_ids(indptr) * data.num_items + items).values)
    candidates = [items[picked]]
    for _ in range(negatives):
        candidates.append(dataloader.sample_negatives(sampler, users, generator))
    train_users = row_ids(indptr)[keep]
    return dataclasses.replace(data, train_users=train_users, train_items=items[keep],
                               val=dataloader.Candidates(users, torch.stack(candidates, 1)))


def tune(name, data, k=10, seed=0, fixed=None):
    """(best parameters, [(parameters, validation HR@k, NDCG@k)]): every cell of GRIDS[name] (with the `fixed`
    parameters) fitted on the training pairs and scored on the validation items (the split's own, else
    validation_split's), best by NDCG@k."""
    tuning = data if data.val is not None else validation_split(data, seed)
    grid = GRIDS[name]
    table = []
    for values in itertools.product(*grid.values()):
        params = {**(fixed or {}), **dict(zip(grid, values))}
        hr, ndcg = score(fit(name, tuning, **params), tuning, tuning.val, k)
        print(f"  {name} {params}: validation HR@{k} {hr:.4f} NDCG@{k} {ndcg:.4f}", flush=True)
        table.append((params, hr, ndcg))
    return max(table, key=lambda row: row[2])[0], table


# --- the command line ---

def build_parser():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data", help="directory holding the split files")
    p.add_argument("--dataset", default=None, help="split name (default: as main.py: melon, else the sample)")
    p.add_argument("--model", choices=NAMES, default="itemknn")
    p.add_argument("--neighbours", type=int, default=None, help=f"item-kNN: neighbours an item keeps "
                   f"(default {DEFAULTS['itemknn']['neighbours']})")
    p.add_argument("--shrink", type=float, default=None, help=f"item-kNN: added to the cosine's denominator "
                   f"(default {DEFAULTS['itemknn']['shrink']:g})")
    p.add_argument("--l2", type=float, default=None, help=f"EASE: weight decay (default {DEFAULTS['ease']['l2']:g}); "
                   f"iALS: regularisation, scaled by each row's frequency (default {DEFAULTS['ials']['l2']:g})")
    p.add_argument("--dim", type=int, default=None, help=f"iALS: embedding size (default {DEFAULTS['ials']['dim']})")
    p.add_argument("--unobserved", type=float, default=None, help=f"iALS: weight of the unobserved pairs "
                   f"(default {DEFAULTS['ials']['unobserved']:g})")
    p.add_argument("--epochs", type=int, default=None, help=f"iALS: rounds of alternating least squares "
                   f"(default {DEFAULTS['ials']['epochs']})")
    p.add_argument("--tune", action="store_true", help="choose the parameters on validation data (see the top)")
    p.add_argument("--seed", type=int, default=0, help="of the validation items --tune holds out")
    p.add_argument("--topk", type=int, default=10, help="K of HR@K and NDCG@K")
    p.add_argument("--eval", choices=["sampled", "full"], default="sampled")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--save_dir", default=None, help="where results.json goes (default: a new "
                   "runs/DATASET/baseline-MODEL/YYYYMMDD-HHMMSS); one that holds results.json is refused")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    params = {key: getattr(args, key) for key in DEFAULTS[args.model] if getattr(args, key, None) is not None}
    for key in PARAMETERS:
        if getattr(args, key) is not None and key not in DEFAULTS[args.model]:
            p.error(f"--{key} is not a parameter of --model {args.model}")
    tuned = [key for key in params if key in GRIDS[args.model]]
    if args.tune and tuned:
        p.error(f"--tune chooses {', '.join('--' + key for key in tuned)} itself")
    if any(getattr(args, key) is not None and getattr(args, key) < 1 for key in ("neighbours", "dim", "epochs")) \
            or args.topk < 1 or args.threads < 1:
        p.error("--neighbours, --dim, --epochs, --topk and --threads must be at least 1")
    if args.threads > MAX_THREADS:
        p.error(f"--threads must be at most {MAX_THREADS}, got {args.threads}")
    given = [getattr(args, key) for key in ("shrink", "unobserved") if getattr(args, key) is not None]
    if any(not 0 <= value < math.inf for value in given) \
            or (args.l2 is not None and not 0 < args.l2 <= torch.finfo(torch.float32).max):
        p.error("--shrink and --unobserved must be finite numbers, not negative, and --l2 a positive one (float32's "
                "range)")
    torch.set_num_threads(args.threads)
    args.dataset = args.dataset or dataloader.default_dataset(args.data_dir)
    if args.save_dir:  # checked before the work, made after the split loads
        check_results_dir(args.save_dir)
        check_output(os.path.join(args.save_dir, "results.json"), "--save_dir")
    data = dataloader.load(args.data_dir, args.dataset)
    save_dir = results_dir(args.save_dir, os.path.join("runs", args.dataset, f"baseline-{args.model}"))
    provenance = run_provenance(args, data.device)
    started = time.perf_counter()
    table = None
    if args.tune and GRIDS[args.model]:
        params, table = tune(args.model, data, args.topk, args.seed, params)
    tune_seconds = time.perf_counter() - started
    model = fit(args.model, data, **params)
    fit_seconds = time.perf_counter() - started - tune_seconds
    hr, ndcg = score(model, data, data.test, args.topk, args.eval)
    eval_seconds = time.perf_counter() - started - tune_seconds - fit_seconds
    results = {"model": args.model, "params": {**DEFAULTS[args.model], **params}, "hr": hr, "ndcg": ndcg,
               "protocol": args.eval, "selection": None if table is None else "val",
               "tuning": None if table is None else [{"params": p_, "val_hr": h, "val_ndcg": n} for p_, h, n in table],
               "tune_seconds": tune_seconds, "fit_seconds": fit_seconds, "eval_seconds": eval_seconds,
               "config": vars(args), "provenance": provenance}
    with atomic_open(os.path.join(save_dir, "results.json")) as f:
        json.dump(results, f, indent=1)
    print(f"wrote {os.path.join(save_dir, 'results.json')}; tuning {tune_seconds:.1f}s, fit {fit_seconds:.1f}s, "
          f"{args.eval} evaluation {eval_seconds:.1f}s")
    print(f"{args.model} {results['params']}: HR@{args.topk} {hr:.4f} NDCG@{args.topk} {ndcg:.4f}")


if __name__ == "__main__":
    run_cli(main)
