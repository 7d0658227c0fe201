"""baselines.py: each baseline against a dense reference on a tiny split, its two scoring paths, history_scores for
item sets that are not training users, the blockwise co-occurrence counts, validation_split and the command line."""
import json
import os

import pytest
import torch

import baselines
import dataloader
from scoring import evaluate, evaluate_full


@pytest.fixture
def data(tiny_split):
    return dataloader.load(*tiny_split)


def dense_training(data):
    matrix = torch.zeros(data.num_users, data.num_items, dtype=torch.float64)
    matrix[data.train_users, data.train_items] = 1.0
    return matrix


def reference_scores(name, data, **params):
    """[users, items] scores computed the plain dense way, in float64."""
    x = dense_training(data)
    if name == "pop":
        return x.sum(0).expand(data.num_users, -1)
    gram = x.T @ x
    if name == "ease":
        p = torch.linalg.inv(gram + params["l2"] * torch.eye(data.num_items, dtype=torch.float64))
        b = -p / p.diagonal()
        b.fill_diagonal_(0.0)
        return x @ b
    if name == "playlistknn":
        lengths = x.sum(1).clamp(min=1)
        similarity = (x * x.sum(0).clamp(min=1) ** -params["idf"]) @ x.T
        similarity /= lengths[:, None] ** params["alpha"] * lengths[None, :] ** (1 - params["alpha"])
        similarity.fill_diagonal_(0.0)  # never its own neighbour
        top = similarity.topk(params["neighbours"], dim=1)
        return torch.zeros_like(similarity).scatter_(1, top.indices, top.values ** params["power"]) @ x
    users, alpha = x.sum(0), params.get("alpha", 0.5)  # similarity[i, j]: of a held item i to the scored item j
    similarity = gram / (users[:, None] ** alpha * users[None, :] ** (1 - alpha) + params["shrink"] + 1e-6)
    similarity.fill_diagonal_(0.0)
    top = similarity.topk(min(params["neighbours"], data.num_items - 1), dim=0)  # column j: j's neighbours
    weights = torch.zeros_like(similarity).scatter_(0, top.indices, top.values ** params.get("power", 1.0))
    return x @ weights


@pytest.mark.parametrize("name,params", [("pop", {}), ("itemknn", {"neighbours": 20, "shrink": 5.0}),
                                         ("itemknn", {"neighbours": 10_000, "shrink": 5.0, "alpha": 1.0, "power": 2.0}),
                                         ("itemknn", {"neighbours": 10_000, "shrink": 0.0, "alpha": 0.8, "power": 0.5}),
                                         ("ease", {"l2": 30.0}),
                                         ("playlistknn", {"neighbours": 20, "alpha": 0.7, "power": 2.0, "idf": 0.5})])
def test_scores_match_a_dense_reference_on_both_paths(data, name, params):
    model = baselines.fit(name, data, **params)
    assert not list(model.parameters())  # buffers only
    expected = reference_scores(name, data, **params).float()
    score = model.candidate_scorer()
    users = data.test.users[:37]
    torch.testing.assert_close(score(users), expected[users], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score(users, data.test.items[:37]), expected[users[:, None], data.test.items[:37]],
                               atol=1e-4, rtol=1e-4)


def test_history_scores_of_new_item_sets_match_the_users_with_those_items(data):
    indptr, items = baselines.training_csr(data)
    users = torch.tensor([3, 0, 17])
    set_indptr, set_items = dataloader.csr_rows(indptr, items, users)
    rows = [set_items[begin:end] for begin, end in zip(set_indptr[:-1], set_indptr[1:])]
    doubled = torch.cat([torch.cat([row.flip(0), row]) for row in rows])  # unsorted, every item twice: the same sets
    for name in baselines.NAMES:
        model = baselines.fit(name, data)
        expected = model.candidate_scorer()(users)
        own = {"exclude": users} if name == "playlistknn" else {}  # the user itself is not its own neighbour
        torch.testing.assert_close(model.history_scores(set_indptr, set_items, **own), expected)
        torch.testing.assert_close(model.history_scores(set_indptr * 2, doubled, **own), expected)


def test_blockwise_pair_counts_equal_the_dense_product(data, monkeypatch):
    indptr, items = baselines.training_csr(data)
    dense = torch.cat([block for _, block in baselines.cooccurrence_blocks(indptr, items, data.num_items)])
    monkeypatch.setattr(baselines, "DENSE_SPEEDUP", 0)  # the item-pair path, as at Melon scale
    monkeypatch.setattr(baselines, "MAX_PAIRS", 3000)  # in many small blocks
    blocks = list(baselines.cooccurrence_blocks(indptr, items, data.num_items))
    assert len(blocks) > 10
    assert torch.equal(torch.cat([block for _, block in blocks]), dense)
    x = dense_training(data)
    assert torch.equal(dense.double(), x.T @ x)


def test_neighbourhood_models_beat_popularity_on_clustered_tastes(data):
    pop, knn, ease = (evaluate(baselines.fit(name, data), data.test) for name in ("pop", "itemknn", "ease"))
    assert knn[0] > pop[0] + 0.3 and ease[0] > pop[0] + 0.3
    full = evaluate_full(baselines.fit("itemknn", data), data, data.test)
    assert 0 < full[0] <= knn[0]


def test_validation_split_holds_out_a_training_item_and_leaves_the_test_alone(data):
    tuning = baselines.validation_split(data, seed=3)
    assert torch.equal(tuning.test.items, data.test.items)
    assert len(tuning.train_users) == len(data.train_users) - data.num_users  # every tiny user has 14 items
    train = dense_training(data).bool()
    held = tuning.val.items[:, 0]
    assert train[tuning.val.users, held].all()
    assert not dense_training(tuning).bool()[tuning.val.users, held].any()
    assert not train[tuning.val.users[:, None], tuning.val.items[:, 1:]].any()  # negatives: not training items
    assert torch.equal(baselines.validation_split(data, seed=3).val.items, tuning.val.items)


def test_fit_rejects_unknown_names_and_parameters(data):
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.fit("slim", data)
    with pytest.raises(ValueError, match="unknown parameter"):
        baselines.fit("ease", data, neighbours=3)


def test_command_line_tunes_on_validation_and_writes_results(tiny_split, tmp_path, capsys):
    data_dir, name = tiny_split
    save_dir = str(tmp_path / "run")
    baselines.main(["--data_dir", data_dir, "--dataset", name, "--model", "ease", "--tune", "--save_dir", save_dir])
    with open(os.path.join(save_dir, "results.json")) as f:
        results = json.load(f)
    assert results["selection"] == "val" and len(results["tuning"]) == len(baselines.GRIDS["ease"]["l2"])
    best = max(results["tuning"], key=lambda row: row["val_ndcg"])["params"]
    assert results["params"] == best
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"ease {best}: HR@10 {results['hr']:.4f} NDCG@10 {results['ndcg']:.4f}"
    with pytest.raises(dataloader.InputError, match="holds an earlier run"):
        baselines.main(["--data_dir", data_dir, "--dataset", name, "--model", "pop", "--save_dir", save_dir])


def ials_objective(model, data, l2, unobserved):
    """Rendle et al. 2022's iALS loss of the model's embeddings, computed densely in float64."""
    x = dense_training(data)
    w, h = model.user_factors.double(), model.item_factors.double()
    scores = w @ h.T
    loss = ((scores - 1) ** 2 * x).sum() + unobserved * (scores ** 2).sum()
    return loss + l2 * (((x.sum(1) + unobserved * data.num_items) * (w ** 2).sum(1)).sum()
                        + ((x.sum(0) + unobserved * data.num_users) * (h ** 2).sum(1)).sum())


def test_ials_solves_each_row_exactly_in_blocks(data, monkeypatch):
    lengths = torch.tensor([0, 5, 1, 0, 12, 3, 7, 2, 9, 1, 4])
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    items = torch.randint(data.num_items, (int(lengths.sum()),), generator=torch.Generator().manual_seed(2))
    factors = torch.randn(data.num_items, 6, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(baselines, "MAX_PADDED", 60)  # a few rows a block
    solved = baselines.least_squares_rows(indptr, items, factors, 0.05, 0.3)
    f = factors.double()
    for row in range(len(lengths)):
        held = f[items[indptr[row]:indptr[row + 1]]]
        system = held.T @ held + 0.3 * f.T @ f + 0.05 * (len(held) + 0.3 * len(f)) * torch.eye(6, dtype=torch.float64)
        expected = torch.linalg.solve(system, held.sum(0))
        torch.testing.assert_close(solved[row].double(), expected, atol=1e-5, rtol=1e-4)


def test_ials_epochs_never_raise_its_objective(data):
    losses = [ials_objective(baselines.fit("ials", data, dim=8, l2=0.01, unobserved=0.5, epochs=epochs), data, 0.01,
                             0.5) for epochs in (1, 2, 4, 8)]
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]


def test_ials_beats_popularity_and_tunes_with_its_size_given(tiny_split, tmp_path, data):
    pop, ials = (evaluate(baselines.fit(name, data, **params), data.test)
                 for name, params in (("pop", {}), ("ials", {"dim": 16})))
    assert ials[0] > pop[0] + 0.3
    save_dir = str(tmp_path / "run")
    baselines.main(["--data_dir", tiny_split[0], "--dataset", tiny_split[1], "--model", "ials", "--dim", "16",
                    "--epochs", "4", "--tune", "--save_dir", save_dir])
    with open(os.path.join(save_dir, "results.json")) as f:
        results = json.load(f)
    assert len(results["tuning"]) == 9 and all(row["params"]["dim"] == 16 for row in results["tuning"])
    assert results["params"]["dim"] == 16 and results["params"]["epochs"] == 4
