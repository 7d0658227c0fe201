"""Split files -> tensors on the device: training pairs, exact vectorised negative sampling per epoch, test candidates;
which split to train on by default (the built-in sample, made on first use, when there is no Melon split).

Reads the NCF paper's format (NAME.train.rating, NAME.test.rating, NAME.test.negative, optional NAME.val.*,
optional NAME.meta.json), including the paper's own ML-1M files unchanged.
"""
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import split
import synthetic
from utils import InputError, read_json

PAIR = re.compile(r"\((\d+),(\d+)\)")
# Negative sampling looks pairs up in a bitmap of every (user, item) pair up to this many pairs (512 MiB; Melon
# takes 472 MB), in sorted keys beyond (several times slower).
BITMAP_MAX_BITS = 2 ** 32


@dataclass
class Candidates:
    """One evaluation set: row r scores items[r] for users[r]; column 0 is the held-out item."""
    users: torch.Tensor  # [rows]
    items: torch.Tensor  # [rows, 1 + negatives]


@dataclass
class Data:
    name: str
    num_users: int
    num_items: int
    train_users: torch.Tensor  # [pairs], sorted by user
    train_items: torch.Tensor  # [pairs]
    test: Candidates
    val: Candidates | None
    seen_indptr: torch.Tensor  # CSR by user of the items a user interacted with outside the test item
    seen_items: torch.Tensor
    forbidden: torch.Tensor  # keys user * num_items + item that training negatives must avoid: a bitmap or sorted
    meta: dict

    @property
    def device(self):
        return self.train_users.device


def first_bad_line(path, is_good):
    """1-based number and text of the first line of `path` for which is_good(fields) is False."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not is_good(line.rstrip("\n").split("\t")):
                return number, line.strip()
    return None, None


def is_int(text):
    """Whether `text` is an integer that int64 holds."""
    return text.strip().lstrip("-").isdigit() and -2 ** 63 <= int(text) < 2 ** 63


def read_ints(lines, usecols=None):
    """int64 array [rows, columns] of tab-separated integers (numpy's C parser: as fast as pandas, without its
    import); ValueError on a malformed line or lines of different widths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the caller checks for rows
        return np.loadtxt(lines, dtype=np.int64, delimiter="\t", usecols=usecols, ndmin=2, comments=None)


def read_ratings(path):
    """(users, items) int64 arrays from a `user<TAB>item[<TAB>rating<TAB>timestamp]` file."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file (make the split with split.py)")
    try:
        pairs = read_ints(path, usecols=(0, 1))
    except ValueError:
        number, line = first_bad_line(path, lambda f: len(f) >= 2 and is_int(f[0]) and is_int(f[1]))
        raise InputError(f"{path}: line {number}: expected user<TAB>item<TAB>rating<TAB>timestamp, got {line[:80]!r}")
    if not len(pairs):
        raise InputError(f"{path}: empty file")
    users, items = pairs[:, 0], pairs[:, 1]
    if (users < 0).any() or (items < 0).any():
        number, line = first_bad_line(path, lambda f: int(f[0]) >= 0 and int(f[1]) >= 0)
        raise InputError(f"{path}: line {number}: negative id in {line[:80]!r}")
    return users, items


def read_negatives(path, users, items):
    """[rows, negatives] int64 array from a `(user,item)<TAB>neg1<TAB>...` file whose pairs match (users, items)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file (make the split with split.py)")

    def is_good(fields):
        return len(fields) == width and PAIR.fullmatch(fields[0]) and all(is_int(x) for x in fields[1:])

    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    if not lines:
        raise InputError(f"{path}: empty file")
    width = 1 + (len(lines[0][1].split("\t")) if len(lines[0]) == 2 else 0)
    try:
        pairs = [PAIR.fullmatch(line[0]) for line in lines]
        if width < 2 or not all(pairs) or min(map(len, lines)) < 2:
            raise ValueError
        negatives = read_ints([line[1] for line in lines])
        if negatives.shape[1] != width - 1:
            raise ValueError
        pair_users, pair_items = np.array([pair.groups() for pair in pairs], dtype=np.int64).T
    except ValueError:
        number, line = first_bad_line(path, is_good)
        raise InputError(f"{path}: line {number}: expected (user,item)<TAB>neg1<TAB>..., got {line[:80]!r}")
    if len(pair_users) != len(users) or (pair_users != users).any() or (pair_items != items).any():
        mismatch = np.flatnonzero((pair_users != users) | (pair_items != items))[0] if len(users) == len(pair_users) \
            else min(len(users), len(pair_users))
        raise InputError(f"{path}: line {mismatch + 1}: (user,item) pair does not match the .rating file's line")
    return negatives


def read_held_out(data_dir, name, part):
    """(users, items [rows, 1 + negatives]) numpy arrays for `part` in ("test", "val")."""
    users, items = read_ratings(os.path.join(data_dir, f"{name}.{part}.rating"))
    negatives = read_negatives(os.path.join(data_dir, f"{name}.{part}.negative"), users, items)
    return users, np.concatenate([items[:, None], negatives], axis=1)


def read_meta(path):
    """NAME.meta.json ({} when there is none): an object whose counts, when given, are integers and whose id maps
    are lists; a one-line error otherwise."""
    if not os.path.exists(path):
        return {}
    meta = read_json(path, None)
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object (split.py writes it)")
    for key, kind in (("num_users", int), ("num_items", int), ("user_ids", list), ("item_ids", list)):
        if key in meta and not (isinstance(meta[key], kind) and not isinstance(meta[key], bool)):
            raise InputError(f"{path}: '{key}' must be {'an integer' if kind is int else 'a list'}")
    return meta


def check_sizes(prefix, num_users, num_items, user_lines, item_entries, meta):
    """A one-line error when the users or items (their largest index + 1, or meta.json's counts) outnumber what the
    files could hold as 0-based contiguous indices, or meta.json's id maps do not match them."""
    for what, count, most in (("user", num_users, user_lines), ("item", num_items, item_entries)):
        if count > most:
            raise InputError(f"{prefix}: {count:,} {what}s (the largest index + 1, or meta.json's count) but only "
                             f"{most:,} {what} entries: indices must be 0-based and contiguous (split.py's are)")
        ids = meta.get(f"{what}_ids")
        if ids is not None and len(ids) != count:
            raise InputError(f"{prefix}.meta.json: {len(ids):,} {what}_ids for {count:,} {what}s")


def csr_by_user(users, items, num_users):
    """Items grouped by user, stably: (indptr [num_users + 1], items sorted by user)."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, items[order]


def csr_rows(indptr, items, rows):
    """(indptr, items) of the CSR rows `rows` of (indptr, items), in that order."""
    begin = indptr[rows]
    lengths = indptr[rows + 1] - begin
    row_indptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=items.device)
    torch.cumsum(lengths, 0, out=row_indptr[1:])
    offsets = torch.arange(int(row_indptr[-1]), device=items.device) - row_indptr[:-1].repeat_interleave(lengths)
    return row_indptr, items[begin.repeat_interleave(lengths) + offsets]


def row_ids(indptr):
    """The row of each entry of a CSR with `indptr`."""
    return torch.arange(len(indptr) - 1, device=indptr.device).repeat_interleave(indptr.diff())


def load(data_dir, name, device="cpu", exclude_test_negatives=True):
    """Load a split onto `device`. Training negatives avoid the user's training items and, when
    `exclude_test_negatives` (the seed's behaviour), the user's held-out items and evaluation candidates too
    (test and validation). Without it (the NCF paper's protocol) they avoid the training items only, as the paper's
    code does, so a held-out item can be drawn as a training negative. A validation item is treated as the test item
    is: validation stands in for the test when choosing the epoch, so both are scored under the same protocol."""
    train_users, train_items = read_ratings(os.path.join(data_dir, f"{name}.train.rating"))
    if len(train_users) == 0:
        raise InputError(f"{os.path.join(data_dir, name)}.train.rating: no training pairs")
    test_users, test_items = read_held_out(data_dir, name, "test")
    has_val = os.path.exists(os.path.join(data_dir, f"{name}.val.rating"))
    val_users, val_items = read_held_out(data_dir, name, "val") if has_val else (test_users[:0], test_items[:0])

    meta = read_meta(os.path.join(data_dir, f"{name}.meta.json"))
    all_users = np.concatenate([train_users, test_users, val_users])
    num_users = max(int(all_users.max()) + 1, meta.get("num_users", 0))
    num_items = max(int(max(train_items.max(), test_items.max(), val_items.max(initial=0))) + 1,
                    meta.get("num_items", 0))
    check_sizes(os.path.join(data_dir, name), num_users, num_items, len(all_users),
                train_items.size + test_items.size + val_items.size, meta)

    order = np.argsort(train_users, kind="stable")
    train_users, train_items = train_users[order], train_items[order]
    seen_indptr, seen_items = csr_by_user(np.concatenate([train_users, val_users]),
                                          np.concatenate([train_items, val_items[:, 0]]), num_users)
    avoid_users, avoid_items = [train_users], [train_items]
    if exclude_test_negatives:
        avoid_users += [np.repeat(test_users, test_items.shape[1]), np.repeat(val_users, val_items.shape[1])]
        avoid_items += [test_items.ravel(), val_items.ravel()]
    forbidden = forbidden_keys(np.concatenate(avoid_users), np.concatenate(avoid_items), num_items)
    per_user = np.bincount(forbidden // num_items, minlength=num_users)
    if (per_user[train_users] >= num_items).any():
        user = int(np.flatnonzero(per_user >= num_items)[0])
        raise InputError(f"{os.path.join(data_dir, name)}: user {user} has no item left to sample as a negative")

    def tensor(array):
        return torch.from_numpy(np.array(array, dtype=np.int64)).to(device)

    return Data(
        name=name, num_users=num_users, num_items=num_items,
        train_users=tensor(train_users), train_items=tensor(train_items),
        test=Candidates(tensor(test_users), tensor(test_items)),
        val=Candidates(tensor(val_users), tensor(val_items)) if has_val else None,
        seen_indptr=tensor(seen_indptr), seen_items=tensor(seen_items),
        forbidden=forbidden_tensor(forbidden, num_users, num_items, device), meta=meta)


def forbidden_keys(users, items, num_items):
    """The sorted distinct keys user * num_items + item of the (user, item) pairs (numpy arrays)."""
    keys = np.sort(users * num_items + items)
    return keys[np.append(True, keys[1:] != keys[:-1])]  # np.unique is far slower here


def forbidden_tensor(keys, num_users, num_items, device="cpu"):
    """Data.forbidden from forbidden_keys: a bitmap (key_bitmap) where every key fits BITMAP_MAX_BITS, else the keys."""
    keys = torch.from_numpy(np.array(keys, dtype=np.int64)).to(device)
    return key_bitmap(keys, num_users * num_items) if num_users * num_items <= BITMAP_MAX_BITS else keys


def epoch_generator(data, seed, epoch):
    """The generator for one epoch's negatives and shuffle: a function of (seed, epoch) only, so resuming works."""
    key = seed * 1_000_003 + epoch
    if not -2 ** 63 <= key < 2 ** 64:  # what manual_seed takes; a large --seed wraps around (smaller ones unchanged)
        key %= 2 ** 64
    return torch.Generator(device=data.device).manual_seed(key)


def key_bitmap(keys, num_keys):
    """Unique int64 `keys` in [0, num_keys) as a bitmap of int32 words: bit k % 32 of word k // 32 set for each."""
    words = torch.zeros(-(-num_keys // 32), dtype=torch.int32, device=keys.device)
    bits = torch.ones((), dtype=torch.int32, device=keys.device).bitwise_left_shift((keys & 31).int())
    return words.index_add_(0, keys >> 5, bits)  # distinct bits of a word: their sum is their OR


def is_forbidden(data, users, items):
    keys = users * data.num_items + items
    if data.forbidden.dtype == torch.int32:
        return (data.forbidden.index_select(0, keys >> 5).bitwise_right_shift_((keys & 31).int()) & 1).bool()
    found = torch.searchsorted(data.forbidden, keys).clamp_(max=len(data.forbidden) - 1)
    return data.forbidden.index_select(0, found) == keys


def sample_negatives(data, users, generator):
    """One uniformly random item per entry of `users`, never in data.forbidden for that user (exact rejection)."""
    items = torch.randint(data.num_items, users.shape, generator=generator, device=data.device)
    redraw = is_forbidden(data, users, items).nonzero().squeeze(1)
    while len(redraw):
        items[redraw] = torch.randint(data.num_items, redraw.shape, generator=generator, device=data.device)
        redraw = redraw[is_forbidden(data, users[redraw], items[redraw])]
    return items


def epoch_samples(data, num_neg, seed, epoch):
    """Shuffled (users, items, labels) for one epoch: every training pair plus `num_neg` fresh negatives each."""
    generator = epoch_generator(data, seed, epoch)
    neg_users = data.train_users.repeat(num_neg)
    neg_items = sample_negatives(data, neg_users, generator)
    items = torch.cat([data.train_items, neg_items])
    positives = len(data.train_users)
    order = torch.randperm(len(items), generator=generator, device=data.device)
    # Sample j is positive j, or a negative for the user of positive j % positives: gathering users from the
    # small positives array and labels from `order` itself avoids two gathers over the whole epoch.
    return data.train_users.index_select(0, order % positives), items.index_select(0, order), (order < positives).float()


def batches(tensors, batch_size, rank=0, world_size=1, start=0):
    """Consecutive global batches of `batch_size` rows of each tensor, from batch number `start` on (views, no
    copies). With several ranks each yields its shard of every global batch: every world_size-th row from row
    `rank` on, so the shards are disjoint, cover the batch, differ in size by at most one row, and (the epoch
    being shuffled) hold the same mix of positives and negatives."""
    for begin in range(start * batch_size, len(tensors[0]), batch_size):
        yield [t[begin:begin + batch_size][rank::world_size] for t in tensors]


def default_dataset(data_dir):
    """melon when its split exists; otherwise the built-in synthetic sample, generated and split on first use."""
    if os.path.exists(os.path.join(data_dir, "melon.train.rating")):
        return "melon"
    if not os.path.exists(os.path.join(data_dir, "sample.train.rating")):
        train_json, _ = synthetic.generate(os.path.join(data_dir, "sample"))
        split.split(train_json, data_dir, "sample")
    print(f"no Melon split at {os.path.join(data_dir, 'melon.train.rating')}: "
          f"training on the built-in synthetic sample ({os.path.join(data_dir, 'sample')}.*)")
    return "sample"
