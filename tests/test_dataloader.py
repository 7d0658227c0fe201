import os

import pytest
import torch

import dataloader
from conftest import SHARED_DATA, write_split
from utils import InputError

ML1M = os.path.join(SHARED_DATA, "ncf-ml-1m")


@pytest.mark.skipif(not os.path.isdir(ML1M), reason="../shared/data is absent")
def test_loads_the_ncf_papers_ml1m_files_unchanged():
    data = dataloader.load(ML1M, "ml-1m")
    assert (data.num_users, data.num_items, len(data.train_users)) == (6040, 3706, 994169)
    assert data.test.items.shape == (6040, 100)
    assert data.test.users.tolist() == list(range(6040))
    assert data.test.items[0, :3].tolist() == [25, 1064, 174]  # first line: (0,25) 1064 174 ...


def positive_keys(data):
    keys = torch.cat([data.train_users * data.num_items + data.train_items,
                      data.test.users * data.num_items + data.test.items[:, 0]])
    return set(keys.tolist())


def test_training_negatives_are_never_positives_over_many_epochs(tiny_split):
    data = dataloader.load(*tiny_split)
    positives = positive_keys(data)
    test_negatives = set((data.test.users[:, None] * data.num_items + data.test.items[:, 1:]).flatten().tolist())
    for epoch in range(1, 31):
        users, items, labels = dataloader.epoch_samples(data, 4, seed=1, epoch=epoch)
        assert len(users) == 5 * len(data.train_users) and labels.sum().item() == len(data.train_users)
        keys = (users * data.num_items + items)
        negatives = set(keys[labels == 0].tolist())
        assert not negatives & positives
        assert not negatives & test_negatives  # the seed's default: test negatives are never training negatives
        assert set(keys[labels == 1].tolist()) == set((data.train_users * data.num_items + data.train_items).tolist())


def test_paper_protocol_may_sample_test_negatives(tiny_split):
    data = dataloader.load(*tiny_split, exclude_test_negatives=False)
    test_negatives = set((data.test.users[:, None] * data.num_items + data.test.items[:, 1:]).flatten().tolist())
    users, items, labels = dataloader.epoch_samples(data, 4, seed=1, epoch=1)
    negatives = set((users * data.num_items + items)[labels == 0].tolist())
    assert negatives & test_negatives
    assert not negatives & set((data.train_users * data.num_items + data.train_items).tolist())


def test_negatives_are_spread_over_the_allowed_items(tiny_split):
    data = dataloader.load(*tiny_split)
    users, items, labels = dataloader.epoch_samples(data, 20, seed=3, epoch=1)
    counts = torch.bincount(items[labels == 0], minlength=data.num_items).float()
    assert (counts > 0).float().mean() > 0.99
    assert counts.std() / counts.mean() < 0.2


def test_same_seed_same_epoch_tensors(tiny_split):
    data = dataloader.load(*tiny_split)
    first = dataloader.epoch_samples(data, 4, seed=7, epoch=3)
    again = dataloader.epoch_samples(data, 4, seed=7, epoch=3)
    other_epoch = dataloader.epoch_samples(data, 4, seed=7, epoch=4)
    other_seed = dataloader.epoch_samples(data, 4, seed=8, epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other_epoch[1])
    assert not torch.equal(first[1], other_seed[1])


def test_batches_are_slices_covering_everything():
    x = torch.arange(10)
    parts = list(dataloader.batches([x, x * 2], 4))
    assert [p[0].tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert parts[2][1].tolist() == [16, 18]


def test_validation_files_load_and_are_avoided(tmp_path):
    data = dataloader.load(*write_split(tmp_path, val=True))
    assert data.val is not None and data.val.items.shape == (200, 50)
    val_keys = set((data.val.users * data.num_items + data.val.items[:, 0]).tolist())
    users, items, labels = dataloader.epoch_samples(data, 4, seed=1, epoch=1)
    assert not set((users * data.num_items + items)[labels == 0].tolist()) & val_keys


@pytest.mark.parametrize("suffix,content,expected", [
    ("train.rating", "0\t1\t1\t0\n0\tx\t1\t0\n", "tiny.train.rating: line 2"),
    ("test.negative", "(0,1)\t5\t6\n(1,2\t7\t8\n", "tiny.test.negative: line 2"),
    ("test.negative", "(0,1)\t5\t6\n(1,2)\t7\n", "tiny.test.negative: line 2"),
    ("test.negative", "(0,1)\t5\t6\n(1,2)\t7\t8\t9\n", "tiny.test.negative: line 2"),
    ("test.negative", "(0,1)\t5\t6\n(1,2)\tx\t8\n", "tiny.test.negative: line 2"),
])
def test_malformed_lines_are_named(tiny_split, suffix, content, expected):
    data_dir, name = tiny_split
    with open(os.path.join(data_dir, f"{name}.{suffix}"), "w") as f:
        f.write(content)
    with pytest.raises(InputError, match=expected):
        dataloader.load(data_dir, name)


def test_missing_split_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.train.rating: no such file"):
        dataloader.load(str(tmp_path), "nothing")
