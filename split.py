"""Raw data -> leave-one-out split files in the NCF paper's format.

Melon Playlist Dataset (`train.json` with `song_meta.json` beside it: playlists are users,
songs are items, the held-out song is the latest released) or any delimited
`user, item[, rating[, timestamp]]` file (held-out item: the latest timestamp, else the last
in file order). Writes NAME.train.rating, NAME.test.rating, NAME.test.negative
[, NAME.val.rating, NAME.val.negative] and NAME.meta.json into OUT_DIR, all or nothing; from Melon also
NAME.tags.json (each playlist's tags and title, by user index, for playlist continuation).

Playlist continuation (the Kakao Arena task): --arena makes the Arena's local split (split_data.py: shuffled, 80%
training, 20% questions of four kinds) and writes NAME.questions.json and NAME.answers.json; --questions FILE
(repeatable) adds the official val.json / test.json questions. Question playlists are users of the model through
their visible songs, with no held-out item; the leave-one-out items come from the other playlists.

    python3 split.py --input data/melon/train.json --out_dir data --name melon
    python3 split.py --input data/melon/train.json --out_dir data --name melon_arena --arena
    python3 split.py --input data/melon/train.json --questions data/melon/val.json --out_dir data --name melon
    python3 split.py --input ratings.dat --out_dir data --name ml1m
"""
import io
import itertools
import json
import math
import os
import re
import time
from contextlib import ExitStack

import numpy as np
import pandas as pd

from arena import ARENA_SEED, arena_split, check_records, check_unique_ids, read_playlists
from utils import MISSING, InputError, Parser, atomic_path, check_output, plural, read_json, run_cli

TEST_ITEM_RULES = ("latest", "last", "random")
INT_TOKEN = r"-?\d{1,18}"
BAD_DATE = np.iinfo(np.int64).min


def split(input_path, out_dir="data", name=None, min_item_count=None, min_user_items=None,
          test_item="latest", num_test_neg=99, seed=42, val=False, verbose=True, arena=False, arena_seed=ARENA_SEED,
          questions=(), exclude=None):
    """Split `input_path` into leave-one-out files in `out_dir` (options, reading, filtering, holding out, then
    the files written all at once); return the meta dict (NAME.meta.json).

    Melon only: `arena` makes the Arena's local question/answer split (seeded by `arena_seed`); `questions` are
    Arena question files whose playlists join as users without held-out items; `exclude` is an Arena JSON file
    whose playlist ids are left out (the training playlists of an Arena split without its question playlists)."""
    start = time.time()
    melon = input_path.endswith(".json")
    if (arena or questions or exclude) and not melon:
        raise InputError("--arena, --questions and --exclude need a Melon train.json as --input")
    min_item_count = (25 if melon else 1) if min_item_count is None else min_item_count
    min_user_items = (3 if val else 2) if min_user_items is None else min_user_items
    check_options(input_path, min_item_count, min_user_items, test_item, num_test_neg, seed, val, name)
    if name is None:
        path = os.path.abspath(input_path)
        name = os.path.basename(os.path.dirname(path)) if melon else os.path.splitext(os.path.basename(path))[0]
    check_outputs(out_dir, name, melon, val, arena, dict(input=input_path, questions=questions, exclude=exclude))

    data, arena_files = read_melon(input_path, arena, arena_seed, questions, exclude) if melon \
        else (load_delimited(input_path), {})
    if verbose and test_item == "latest" and not data.get("timestamps", True):
        print(f"note: {input_path} has no timestamps, so each user's held-out item is its last line; if the file "
              f"is sorted by item (as Last.fm's user_artists.dat is, by artist id), use --test_item random")
    rows, user, item, user_ids, item_ids, stats, kept_users = filter_counts(data, min_item_count, min_user_items)
    question = data["question"][kept_users]
    if len(rows) == 0 or question.all():
        raise InputError(f"no {'playlists' if melon else 'users'} left after filtering {input_path} "
                         f"(min_item_count={min_item_count}, min_user_items={min_user_items})")
    columns = (user, item, data["rating"][rows], data["time"][rows])
    held = hold_out_all(columns, question, len(user_ids), len(item_ids), test_item, num_test_neg, seed, val, melon,
                        user_ids)

    meta = {
        "name": name,
        "format": "melon" if melon else "delimited",
        "source": os.path.abspath(input_path),
        "seed": seed,
        "num_users": len(user_ids),
        "num_items": len(item_ids),
        "num_train": len(held["train"]),
        "num_test_users": len(held["test"]),
        "num_test_neg": num_test_neg,
        "has_val": bool(val),
        "filters": {"min_item_count": min_item_count, "min_user_items": min_user_items, "test_item": test_item},
        "stats": {**stats, "interactions": len(user), "density": len(user) / (len(user_ids) * len(item_ids))},
        "user_ids": user_ids.tolist(),
        "item_ids": item_ids.tolist(),
    }
    files = split_files(name, columns, held)
    if melon:
        files.update(melon_files(meta, name, out_dir, input_path, data, kept_users, question, arena_files,
                                 dict(questions=questions, exclude=exclude, arena_seed=arena_seed)))
    files[f"{name}.meta.json"] = lambda p: write_meta(p, meta)
    paths = write_all(out_dir, files)
    if verbose:
        print(summary(meta, paths, time.time() - start))
    return meta


def read_melon(input_path, arena, arena_seed, questions, exclude):
    """(interactions as load_melon returns them, the Arena split's files or {}) of a Melon train.json: its
    playlists less those of `exclude`, then the playlists of the `questions` files and, with `arena`, the Arena
    split's question playlists (users without held-out items)."""
    playlists = read_playlists(input_path)
    num_excluded = 0
    if exclude is not None:
        playlists, num_excluded = excluded(input_path, playlists, exclude, questions)
    sources = [(input_path, playlists)] + [(path, read_playlists(path)) for path in questions]
    check_unique_ids(sources)
    asked = [record for _, records in sources[1:] for record in records]
    arena_files = {}
    if arena:
        playlists, arena_asked, arena_questions, arena_answers, kinds = arena_split(playlists, arena_seed)
        asked += arena_asked
        arena_files = {"questions": arena_questions, "answers": arena_answers, "kinds": kinds}
    data = load_melon(input_path, playlists + asked, num_questions=len(asked))
    data["stats"]["excluded_playlists"] = num_excluded
    return data, arena_files


def hold_out_all(columns, question, num_users, num_items, test_item, num_test_neg, seed, val, melon, user_ids):
    """{"train", "test", "val" (or None): row indices into `columns` (user, item, rating, time), training rows by
    user; "negatives", "val_negatives": the sampled evaluation negatives of every user}. Question users have no
    held-out item; time ties go to the first item on Melon (release dates), to the last elsewhere. Each part draws
    from its own stream of the seed."""
    user, item, _, when = columns
    ties_last = not melon
    pick_test, pick_val, neg_test, neg_val = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    in_train = np.ones(len(user), bool)
    rest = np.flatnonzero(~question[user])
    test_rows = rest[hold_out(user[rest], when[rest], rest, test_item, ties_last, pick_test)]
    in_train[test_rows] = False
    val_rows = None
    if val:
        rest = np.flatnonzero(in_train & ~question[user])
        val_rows = rest[hold_out(user[rest], when[rest], rest, test_item, ties_last, pick_val)]
        in_train[val_rows] = False
    negatives = sample_test_negatives(user, item, num_users, num_items, num_test_neg, neg_test, user_ids)
    val_negatives = (sample_test_negatives(user, item, num_users, num_items, num_test_neg, neg_val, user_ids)
                     if val else None)
    train_rows = np.flatnonzero(in_train)
    return {"train": train_rows[np.argsort(user[train_rows], kind="stable")], "test": test_rows, "val": val_rows,
            "negatives": negatives, "val_negatives": val_negatives}


def split_files(name, columns, held):
    """{file name: writer} of the leave-one-out files in the NCF paper's format."""
    user, item = columns[:2]
    files = {
        f"{name}.train.rating": lambda p: write_rows(p, columns, held["train"]),
        f"{name}.test.rating": lambda p: write_rows(p, columns, held["test"]),
        f"{name}.test.negative": lambda p: write_negatives(p, user, item, held["test"],
                                                           held["negatives"][user[held["test"]]]),
    }
    if held["val"] is not None:
        files[f"{name}.val.rating"] = lambda p: write_rows(p, columns, held["val"])
        files[f"{name}.val.negative"] = lambda p: write_negatives(p, user, item, held["val"],
                                                                  held["val_negatives"][user[held["val"]]])
    return files


def melon_files(meta, name, out_dir, input_path, data, kept_users, question, arena_files, options):
    """{file name: writer} of a Melon split's own files (NAME.tags.json; with an Arena split its questions and
    answers), its entries added to `meta`; options: the questions, exclude and arena_seed it was made with."""
    meta["song_meta"] = os.path.abspath(os.path.join(os.path.dirname(input_path), "song_meta.json"))
    meta["num_question_users"] = int(question.sum())
    meta["questions"] = [os.path.abspath(path) for path in options["questions"]]
    meta["exclude"] = os.path.abspath(options["exclude"]) if options["exclude"] is not None else None
    tags = {"tags": [data["tags"][u] for u in kept_users.tolist()],
            "titles": [data["titles"][u] for u in kept_users.tolist()]}
    files = {f"{name}.tags.json": lambda p: write_meta(p, tags)}
    if arena_files:
        meta["arena"] = {"seed": options["arena_seed"], "kinds": arena_files["kinds"],
                         "questions": os.path.abspath(os.path.join(out_dir, f"{name}.questions.json")),
                         "answers": os.path.abspath(os.path.join(out_dir, f"{name}.answers.json"))}
        files[f"{name}.questions.json"] = lambda p: write_meta(p, arena_files["questions"])
        files[f"{name}.answers.json"] = lambda p: write_meta(p, arena_files["answers"])
    return files


def check_outputs(out_dir, name, melon, val, arena, inputs):
    """Before any work: every file the split will write in OUT_DIR can be written there (utils.check_output: the
    directory is or can be made, no output is a directory or one of the `inputs`: {"input", "questions" (a list),
    "exclude"})."""
    inputs = [("--input", inputs["input"]), ("--exclude", inputs["exclude"])] + [
        ("--questions", path) for path in inputs["questions"]]
    suffixes = ["train.rating", "test.rating", "test.negative", "meta.json"] + (
        ["val.rating", "val.negative"] if val else []) + (["tags.json"] if melon else []) + (
        ["questions.json", "answers.json"] if arena else [])
    for suffix in suffixes:
        check_output(os.path.join(out_dir, f"{name}.{suffix}"), "--out_dir", inputs)


def excluded(input_path, playlists, exclude, questions):
    """(the playlists whose ids are not in the Arena file `exclude`, how many were left out); an InputError when
    `exclude` is also a --questions file or leaves out none (its ids are not this train.json's: a wrong file)."""
    for path in questions:
        if os.path.exists(path) and os.path.exists(exclude) and os.path.samefile(path, exclude):
            raise InputError(f"--exclude {exclude} is also --questions {path}: its playlists cannot be both left "
                             f"out and asked")
    dropped = {record[0] for record in read_playlists(exclude)}
    kept = [record for record in playlists if record[0] not in dropped]
    if len(kept) == len(playlists):
        raise InputError(f"--exclude {exclude}: none of its {plural(len(dropped), 'playlist id')} is a playlist of "
                         f"{input_path}, so it would leave out nothing")
    return kept, len(playlists) - len(kept)


def check_options(input_path, min_item_count, min_user_items, test_item, num_test_neg, seed, val, name):
    """Raise InputError naming the flag for an impossible option value, or the input file when it is not one."""
    if min_item_count < 0:
        raise InputError(f"--min_item_count must be >= 0 (got {min_item_count})")
    least = 3 if val else 2
    if min_user_items < least:
        raise InputError(f"--min_user_items must be >= {least}{' with --val' if val else ''}: every user needs "
                         f"a training item besides its held-out one(s) (got {min_user_items})")
    if test_item not in TEST_ITEM_RULES:
        raise InputError(f"--test_item must be one of {', '.join(TEST_ITEM_RULES)} (got {test_item!r})")
    if num_test_neg < 1:
        raise InputError(f"--num_test_neg must be >= 1 (got {num_test_neg})")
    if seed < 0:
        raise InputError(f"--seed must be >= 0 (got {seed})")
    if name is not None and (not name or os.sep in name or name in (".", "..")):
        raise InputError(f"--name must be a plain file name (got {name!r})")
    if not os.path.isfile(input_path):
        raise InputError(f"{input_path}: {'not a file' if os.path.exists(input_path) else 'no such file'}")


def load_melon(path, playlists, num_questions=0):
    """`playlists` (tuples of PLAYLIST_FIELDS, the last `num_questions` of them questions) with song_meta.json beside
    `path` -> interactions in playlist order, deduped, songs without a usable release date or missing from song_meta
    dropped. Time = release date as unix seconds. Keeps each playlist's tags and title, and which are questions."""
    meta_path = os.path.join(os.path.dirname(path), "song_meta.json")
    if not os.path.isfile(meta_path):
        raise InputError(f"{meta_path}: no such file (song_meta.json must be beside {os.path.basename(path)})")
    playlist_ids = np.array([p[0] for p in playlists], np.int64)
    lengths = np.fromiter((len(p[1]) for p in playlists), np.int64, len(playlists))
    songs = np.fromiter(itertools.chain.from_iterable(p[1] for p in playlists), np.int64, int(lengths.sum()))
    tags = [[] if p[2] is MISSING else p[2] for p in playlists]
    titles = ["" if p[3] is MISSING else p[3] for p in playlists]
    question = np.arange(len(playlists)) >= len(playlists) - num_questions
    del playlists

    song_meta = read_json(meta_path, ("id", "issue_date"))
    check_records(meta_path, song_meta, {"id": "int", "issue_date": "date"})
    meta_ids = np.array([s[0] for s in song_meta], np.int64)
    meta_days = release_days(pd.Series([s[1] for s in song_meta], dtype=object).astype(str))
    del song_meta
    duplicate = pd.Index(meta_ids).duplicated()
    if duplicate.any():
        index = int(np.argmax(duplicate))
        raise InputError(f"{meta_path}: record {index}: song id {meta_ids[index]} appears twice")

    user = np.repeat(np.arange(len(playlist_ids)), lengths)
    item, item_ids = pd.factorize(songs)
    keep = first_occurrences(user, item)
    stats = {"raw_users": len(playlist_ids), "raw_items": len(item_ids), "raw_interactions": len(songs),
             "duplicates_removed": int((~keep).sum())}

    found = pd.Index(meta_ids).get_indexer(item_ids)
    known = found >= 0
    item_days = np.append(meta_days, BAD_DATE)[found]
    bad_date = known & (item_days == BAD_DATE)
    stats.update(dropped_bad_date_songs=int(bad_date.sum()),
                 dropped_bad_date_interactions=int((keep & bad_date[item]).sum()),
                 dropped_unknown_songs=int((~known).sum()),
                 dropped_unknown_interactions=int((keep & ~known[item]).sum()))
    keep &= known[item] & ~bad_date[item]
    return {"user": user[keep], "item": item[keep], "user_ids": playlist_ids, "item_ids": np.asarray(item_ids),
            "rating": np.ones(int(keep.sum()), np.int64), "time": item_days[item[keep]] * 86400, "stats": stats,
            "tags": tags, "titles": titles, "question": question}


def release_days(dates):
    """YYYYMMDD strings -> days since 1970-01-01; 00 month or day reads as 01; BAD_DATE where unparseable."""
    valid = dates.str.fullmatch(r"\d{8}").to_numpy(bool)
    number = np.where(valid, pd.to_numeric(dates.where(valid, "0")).to_numpy(np.int64), 0)
    year, month, day = number // 10000, np.maximum(number // 100 % 100, 1), np.maximum(number % 100, 1)
    valid = valid & (year >= 1) & (month <= 12)
    months = (year - 1970).astype("datetime64[Y]").astype("datetime64[M]") + np.where(valid, month - 1, 0)
    days = months.astype("datetime64[D]") + (day - 1)
    valid = valid & (days.astype("datetime64[M]") == months)
    return np.where(valid, days.astype(np.int64), BAD_DATE)


def first_occurrences(user, item):
    """Boolean mask of rows whose (user, item) pair has not appeared in an earlier row."""
    key = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    return ~pd.Series(key).duplicated().to_numpy()


def load_delimited(path):
    """Read a `user, item[, rating[, timestamp]]` file (tab, comma, `::` or whitespace separated, optional header)
    -> interactions in file order, deduped (first row kept). Missing rating = 1, missing timestamp = file order."""
    sep, header_line, ncols = sniff(path)
    try:
        if sep == "::":
            with open(path, encoding="utf-8-sig") as f:
                source = io.StringIO(f.read().replace("::", "\t"))
        else:
            source = path
        frame = pd.read_csv(source, sep={"::": "\t", None: r"\s+"}.get(sep, sep), header=None, names=range(ncols),
                            skiprows=[header_line] if header_line is not None else None, dtype=str,
                            na_filter=False, quoting=3, skipinitialspace=True, engine="c",
                            encoding="utf-8-sig")
    except pd.errors.ParserError as e:
        raise bad_line(path, sep, header_line, ncols, e) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    users, items = frame[0], frame[1]
    bad = (users == "").to_numpy() | (items == "").to_numpy()
    rating = np.ones(len(frame), np.int64)
    stamp = np.arange(len(frame), dtype=np.int64)
    if ncols >= 3:
        rating = pd.to_numeric(frame[2], errors="coerce").to_numpy(float)
        bad |= ~np.isfinite(rating)
        if np.all(rating[~bad] == np.floor(rating[~bad])):
            rating = np.where(bad, 0, rating).astype(np.int64)
    if ncols == 4:
        value = pd.to_numeric(frame[3], errors="coerce").to_numpy(float)
        bad |= ~np.isfinite(value) | (value != np.floor(value))
        stamp = np.where(bad, 0, value).astype(np.int64)
    if bad.any():
        raise bad_line(path, sep, header_line, ncols, "an empty id or a non-numeric rating/timestamp")
    user, user_ids = pd.factorize(as_ids(users))
    item, item_ids = pd.factorize(as_ids(items))
    keep = first_occurrences(user, item)
    stats = {"raw_users": len(user_ids), "raw_items": len(item_ids), "raw_interactions": len(frame),
             "duplicates_removed": int((~keep).sum()), "dropped_bad_date_songs": 0, "dropped_bad_date_interactions": 0,
             "dropped_unknown_songs": 0, "dropped_unknown_interactions": 0}
    return {"user": user[keep], "item": item[keep], "user_ids": np.asarray(user_ids), "item_ids": np.asarray(item_ids),
            "rating": rating[keep], "time": stamp[keep], "stats": stats, "timestamps": ncols == 4,
            "question": np.zeros(len(user_ids), bool)}


def as_ids(tokens):
    """Id tokens -> int64 when every token is an integer, else the strings themselves."""
    if tokens.str.fullmatch(INT_TOKEN).all():
        return tokens.astype(np.int64).to_numpy()
    return tokens.to_numpy(object)


def split_fields(line, sep):
    """A line's fields under separator `sep` (None: runs of whitespace)."""
    return line.split() if sep is None else [field.strip() for field in line.split(sep)]


def is_blank(line, sep):
    return not (line.strip() if sep is None else line.rstrip("\r\n"))


def sniff(path):
    """(separator, 0-based line index of the header or None, number of columns) from the first lines of `path`."""
    lines = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for index, line in enumerate(f):
                if line.strip():
                    lines.append((index, line))
                if len(lines) == 2:
                    break
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    if not lines:
        raise InputError(f"{path}: empty file")
    first = lines[0][1]
    sep = next((s for s in ("\t", "::", ",") if s in first), None)
    fields = [split_fields(line, sep) for _, line in lines]
    header = looks_like_header(fields[0], fields[1] if len(fields) > 1 else None)
    if header and len(lines) == 1:
        raise InputError(f"{path}: no data lines after the header")
    data_index, data_fields = (lines[1][0], fields[1]) if header else (lines[0][0], fields[0])
    if not 2 <= len(data_fields) <= 4:
        raise InputError(f"{path}: line {data_index + 1}: expected 2 to 4 fields (user, item[, rating[, timestamp]]), "
                         f"found {len(data_fields)}")
    return sep, lines[0][0] if header else None, len(data_fields)


def looks_like_header(first, second):
    """A first line is a header when its user/item fields are not integers, unless it looks like data with
    string ids: numeric extra fields, and a next line whose ids are not integers either."""
    def is_int(token):
        return re.fullmatch(INT_TOKEN, token) is not None

    def is_number(token):
        try:
            float(token)
            return True
        except ValueError:
            return False

    if len(first) < 2 or (is_int(first[0]) and is_int(first[1])):
        return False
    if not all(is_number(token) for token in first[2:]):
        return True
    return second is not None and len(second) >= 2 and is_int(second[0]) and is_int(second[1])


def line_problem(fields, ncols):
    """What is wrong with one data line's fields, or None."""
    if len(fields) != ncols:
        return f"expected {ncols} fields like the first data line, found {len(fields)}"
    if not fields[0] or not fields[1]:
        return "empty user or item id"
    if ncols >= 3:
        try:
            if not math.isfinite(float(fields[2])):
                raise ValueError
        except ValueError:
            return f"rating {fields[2]!r} is not a number"
    if ncols == 4:
        try:
            if not float(fields[3]).is_integer():
                raise ValueError
        except (ValueError, OverflowError):
            return f"timestamp {fields[3]!r} is not an integer"
    return None


def bad_line(path, sep, header_line, ncols, reason):
    """InputError naming the first malformed line of `path` (found by a line-by-line scan)."""
    with open(path, encoding="utf-8-sig") as f:
        for index, line in enumerate(f):
            if index == header_line or is_blank(line, sep):
                continue
            problem = line_problem(split_fields(line, sep), ncols)
            if problem:
                return InputError(f"{path}: line {index + 1}: {problem}")
    return InputError(f"{path}: cannot parse: {reason}")


def filter_counts(data, min_item_count, min_user_items):
    """Drop items seen fewer than `min_item_count` times, then users left with fewer than `min_user_items`
    (question playlists: with none; one pass); renumber both from 0 in order of first appearance.
    Returns (kept rows, user, item, user_ids, item_ids, stats, the kept users' old indices)."""
    user, item = data["user"], data["item"]
    counts = np.bincount(item, minlength=len(data["item_ids"]))
    rare = counts < min_item_count
    keep = ~rare[item]
    user_counts = np.bincount(user[keep], minlength=len(data["user_ids"]))
    keep &= user_counts[user] >= np.where(data["question"], 1, min_user_items)[user]
    rows = np.flatnonzero(keep)
    new_user, old_users = pd.factorize(user[rows])
    new_item, old_items = pd.factorize(item[rows])
    stats = {**data["stats"], "dropped_rare_items": int((rare & (counts > 0)).sum()),
             "dropped_short_users": data["stats"]["raw_users"] - len(old_users)}
    return (rows, new_user.astype(np.int64), new_item.astype(np.int64),
            data["user_ids"][old_users], data["item_ids"][old_items], stats, np.asarray(old_users))


def hold_out(user, when, position, rule, ties_last, rng):
    """Index (into these rows) of each user's held-out row, in user order.

    latest: the greatest `when`, ties broken by position (last if `ties_last`, else first);
    last: the greatest position; random: uniform (seeded by `rng`)."""
    if rule == "latest":
        order = np.lexsort((-position if ties_last else position, -when, user))
    elif rule == "last":
        order = np.lexsort((-position, user))
    else:
        order = np.lexsort((rng.random(len(user)), user))
    sorted_users = user[order]
    return order[np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])]


def sample_test_negatives(user, item, num_users, num_items, n, rng, user_ids):
    """(num_users, n) items each user never interacted with, uniform without replacement.

    Draws ranks r in [0, free_u) among the user's unseen items (redrawing duplicates in bulk) and maps a rank to
    its item through the user's sorted positives p_0 < p_1 < ...: item = r + #{j : p_j - j <= r}. One sorted
    key array (user * num_items + p_j - j) serves every user; no complement is ever built."""
    key = np.sort(user * num_items + item)
    key_user = key // num_items
    free = num_items - np.bincount(key_user, minlength=num_users)
    short = np.flatnonzero(free < n)
    if len(short):
        u = short[0]
        raise InputError(f"--num_test_neg {n} is more than the {plural(int(free[u]), 'item')} user {user_ids[u]} "
                         f"has not interacted with ({plural(len(short), 'user')} short of them; "
                         f"num_items={num_items})")
    starts = np.searchsorted(key_user, np.arange(num_users))
    adjusted = key - (np.arange(len(key)) - starts[key_user])
    ranks = rng.integers(0, free[:, None], size=(num_users, n))
    rows = np.arange(num_users)
    while len(rows):
        block = ranks[rows]
        order = np.argsort(block, axis=1, kind="stable")
        ordered = np.take_along_axis(block, order, axis=1)
        repeat = np.zeros(block.shape, bool)
        np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        r, c = np.nonzero(repeat)
        block[r, c] = rng.integers(0, free[rows[r]])
        ranks[rows] = block
        rows = rows[repeat.any(axis=1)]
    owner = np.arange(num_users)[:, None]
    return ranks + np.searchsorted(adjusted, owner * num_items + ranks, side="right") - starts[:, None]


def write_rows(path, columns, rows):
    """`user\titem\trating\ttimestamp` lines for `rows`."""
    frame = pd.DataFrame({k: column[rows] for k, column in enumerate(columns)})
    frame.to_csv(path, sep="\t", header=False, index=False, lineterminator="\n")


def write_negatives(path, user, item, rows, negatives):
    """`(user,item)\tneg1\t...` lines, one per user."""
    label = "(" + pd.Series(user[rows]).astype(str) + "," + pd.Series(item[rows]).astype(str) + ")"
    frame = pd.concat([label.rename(0), pd.DataFrame(negatives, columns=range(1, negatives.shape[1] + 1))], axis=1)
    frame.to_csv(path, sep="\t", header=False, index=False, lineterminator="\n")


def write_meta(path, meta):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)
        f.write("\n")


def write_all(out_dir, files):
    """Write every file to a temporary path first; rename them into place only once all are written."""
    paths = [os.path.join(out_dir, file) for file in files]
    try:
        with ExitStack() as stack:
            for path, write in zip(paths, files.values()):
                write(stack.enter_context(atomic_path(path)))
    except OSError as e:
        raise InputError(f"{e.filename or out_dir}: cannot write: {e.strerror}") from None
    return paths


def summary(meta, paths, seconds):
    """A one-screen account of the split."""
    s, f = meta["stats"], meta["filters"]
    user, item = ("playlist", "song") if meta["format"] == "melon" else ("user", "item")

    def users(n):
        return plural(n, user)

    def items(n):
        return plural(n, item)

    lines = [
        f"split {meta['name']} ({meta['format']}): {meta['source']}",
        f"  raw        {users(s['raw_users'])}, {items(s['raw_items'])}, {plural(s['raw_interactions'], 'interaction')}",
        f"  removed    {plural(s['duplicates_removed'], 'duplicate')}; "
        + (f"{items(s['dropped_bad_date_songs'])} with unparseable dates, {s['dropped_unknown_songs']:,} missing "
           f"from song_meta; " if meta["format"] == "melon" else "")
        + f"{items(s['dropped_rare_items'])} seen < {f['min_item_count']} times; "
        f"{users(s['dropped_short_users'])} with < {items(f['min_user_items'])}",
        f"  kept       {users(meta['num_users'])} x {items(meta['num_items'])}, "
        f"{plural(s['interactions'], 'interaction')} "
        f"(train {meta['num_train']:,}, test {meta['num_test_users']:,}"
        + (f", val {meta['num_test_users']:,}" if meta["has_val"] else "") + f"), density {s['density']:.6f}",
        f"  held out   {f['test_item']} item per user; {plural(meta['num_test_neg'], 'negative')} each, "
        f"seed {meta['seed']}",
    ]
    if meta.get("exclude"):
        lines.append(f"  excluded   {users(s['excluded_playlists'])} of {meta['exclude']}")
    if meta.get("num_question_users"):
        lines.append(f"  questions  {plural(meta['num_question_users'], 'question ' + user)} train through "
                     f"their visible {item}s, without held-out ones"
                     + (f"; Arena split (seed {meta['arena']['seed']}): " + ", ".join(
                         f"{n:,} {kind}" for kind, n in meta["arena"]["kinds"].items()) if "arena" in meta else ""))
    lines += [
        "  wrote      " + "\n             ".join(paths),
        f"  time       {seconds:.1f} s",
    ]
    return "\n".join(lines)


def main():
    p = Parser(description="Raw data (Melon train.json or a delimited user,item[,rating[,timestamp]] file) -> "
                           "leave-one-out split files in the NCF format.")
    p.add_argument("--input", required=True, help="Melon train.json (song_meta.json beside it) or a delimited file")
    p.add_argument("--out_dir", default="data")
    p.add_argument("--name", help="output name (default: a Melon file's directory name, a delimited file's stem)")
    p.add_argument("--min_item_count", type=int, help="drop items seen fewer times (default 25 Melon, 1 delimited)")
    p.add_argument("--min_user_items", type=int, help="then drop users with fewer items (default 2; 3 with --val)")
    p.add_argument("--test_item", default="latest", choices=TEST_ITEM_RULES,
                   help="held-out item: latest release/timestamp, last in input order, or random")
    p.add_argument("--num_test_neg", type=int, default=99, help="sampled negatives per held-out item")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val", action="store_true", help="also hold out a validation item per user")
    p.add_argument("--arena", action="store_true", help="Melon: the Kakao Arena's local split: 20%% of the "
                   "playlists become questions (NAME.questions.json) with their answers (NAME.answers.json)")
    p.add_argument("--arena_seed", type=int, default=ARENA_SEED, help="seed of --arena's split (the Arena's: 777)")
    p.add_argument("--questions", action="append", default=[], metavar="FILE",
                   help="Melon: an Arena question file (val.json, test.json) whose playlists train through their "
                        "visible songs (repeatable)")
    p.add_argument("--exclude", metavar="FILE", help="Melon: leave out the playlists of this Arena JSON file "
                   "(e.g. an Arena split's questions, to train on its training playlists only)")
    a = p.parse_args()
    if a.arena_seed < 0:
        p.error(f"--arena_seed must be >= 0 (got {a.arena_seed})")
    split(a.input, a.out_dir, a.name, min_item_count=a.min_item_count, min_user_items=a.min_user_items,
          test_item=a.test_item, num_test_neg=a.num_test_neg, seed=a.seed, val=a.val, arena=a.arena,
          arena_seed=a.arena_seed, questions=a.questions, exclude=a.exclude)


if __name__ == "__main__":
    run_cli(main)
