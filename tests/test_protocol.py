"""Training negatives under the seed's default and under the NCF paper's protocol (--no-exclude_test_neg)."""
import math

import torch

import dataloader
from conftest import write_split

EPOCHS, NUM_NEG = 20, 4


def negative_counts(data, key_of_row):
    """How often, over EPOCHS epochs, each user's training negatives hit the item key_of_row gives for that user."""
    hits = 0
    for epoch in range(1, EPOCHS + 1):
        users, items, labels = dataloader.epoch_samples(data, NUM_NEG, seed=5, epoch=epoch)
        negative = labels == 0
        hits += (items[negative] == key_of_row[users[negative]]).sum().item()
    return hits


def expected_held_out_draws(data):
    """Expected number of draws of each user's held-out item: each of a user's n training items brings NUM_NEG
    negatives drawn uniformly from the num_items - n items outside the training set, one of them the held-out item."""
    per_user = torch.bincount(data.train_users, minlength=data.num_users).double()
    p = 1 / (data.num_items - per_user)
    draws = per_user * NUM_NEG * EPOCHS
    return (draws * p).sum().item(), (draws * p * (1 - p)).sum().item()


def test_paper_protocol_draws_the_held_out_item_at_the_expected_rate(tmp_path):
    data = dataloader.load(*write_split(tmp_path, items=120, per_user=15), exclude_test_negatives=False)
    held_out = torch.full((data.num_users,), -1).index_put_((data.test.users,), data.test.items[:, 0])
    mean, variance = expected_held_out_draws(data)  # 200 users x 14 x 4 x 20 / 106: about 2,113 draws
    hits = negative_counts(data, held_out)
    assert abs(hits - mean) < 4 * math.sqrt(variance), (hits, mean)


def test_paper_protocol_draws_the_validation_item_like_the_test_item(tmp_path):
    data = dataloader.load(*write_split(tmp_path, items=120, per_user=15, val=True), exclude_test_negatives=False)
    val_item = torch.full((data.num_users,), -1).index_put_((data.val.users,), data.val.items[:, 0])
    mean, variance = expected_held_out_draws(data)
    assert abs(negative_counts(data, val_item) - mean) < 4 * math.sqrt(variance)


def test_default_never_draws_held_out_items_or_their_candidates(tmp_path):
    data = dataloader.load(*write_split(tmp_path, items=120, per_user=15, val=True))
    for part in (data.test, data.val):
        candidate = torch.zeros(data.num_users, data.num_items, dtype=torch.bool)
        candidate[part.users[:, None], part.items] = True
        for epoch in range(1, EPOCHS + 1):
            users, items, labels = dataloader.epoch_samples(data, NUM_NEG, seed=5, epoch=epoch)
            assert not candidate[users[labels == 0], items[labels == 0]].any()


def test_training_positives_are_never_negatives_under_either_protocol(tmp_path):
    split = write_split(tmp_path, items=120, per_user=15, val=True)
    for exclude in (True, False):
        data = dataloader.load(*split, exclude_test_negatives=exclude)
        positive = torch.zeros(data.num_users, data.num_items, dtype=torch.bool)
        positive[data.train_users, data.train_items] = True
        for epoch in range(1, EPOCHS + 1):
            users, items, labels = dataloader.epoch_samples(data, NUM_NEG, seed=5, epoch=epoch)
            assert not positive[users[labels == 0], items[labels == 0]].any()
