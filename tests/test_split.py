"""split.py: Melon and delimited inputs -> leave-one-out split files; filters, held-out rules, negatives, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import split as split_module
from conftest import run_script
from split import split
from utils import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LASTFM = os.path.join(REPO, "..", "shared", "data", "lastfm-hetrec2011", "user_artists.dat")


def write_melon(directory, playlists, dates):
    """train.json from {playlist id: [song ids]} and song_meta.json from {song id: issue_date}, full schema."""
    os.makedirs(directory, exist_ok=True)
    train = [{"id": pid, "plylst_title": f"목록 {pid}", "tags": ["tag"], "songs": songs, "like_cnt": 1,
              "updt_date": "2013-12-19 18:36:19.000"} for pid, songs in playlists.items()]
    meta = [{"id": sid, "album_id": sid, "album_name": "a", "artist_id_basket": [1], "artist_name_basket": ["x"],
             "song_name": f"노래 {sid}", "song_gn_gnr_basket": ["GN0100"], "song_gn_dtl_gnr_basket": ["GN0101"],
             "issue_date": date} for sid, date in dates.items()]
    with open(os.path.join(directory, "train.json"), "w", encoding="utf-8") as f:
        json.dump(train, f, ensure_ascii=False)
    with open(os.path.join(directory, "song_meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)
    return os.path.join(directory, "train.json")


def read_split(out_dir, name):
    """{part: int array (rows x 4)} for the .rating files, {part: (labels, negatives)} for the .negative files."""
    result = {}
    for part in ("train", "test", "val"):
        path = os.path.join(out_dir, f"{name}.{part}.rating")
        if os.path.exists(path):
            result[part] = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)
        path = os.path.join(out_dir, f"{name}.{part}.negative")
        if os.path.exists(path):
            labels, negatives = [], []
            with open(path) as f:
                for line in f:
                    fields = line.rstrip("\n").split("\t")
                    labels.append(tuple(int(x) for x in fields[0].strip("()").split(",")))
                    negatives.append([int(x) for x in fields[1:]])
            result[f"{part}_negative"] = (labels, np.array(negatives))
    with open(os.path.join(out_dir, f"{name}.meta.json")) as f:
        result["meta"] = json.load(f)
    return result


def positives(s):
    """{user: set of items} over train, test and val."""
    users = {}
    for part in ("train", "test", "val"):
        for row in s.get(part, ()):
            users.setdefault(int(row[0]), set()).add(int(row[1]))
    return users


def check_negatives(s, part="test"):
    pos = positives(s)
    labels, negatives = s[f"{part}_negative"]
    assert [u for u, _ in labels] == list(range(s["meta"]["num_users"]))
    assert [(int(u), int(i)) for u, i, *_ in s[part]] == labels
    for (u, _), row in zip(labels, negatives):
        assert len(set(row.tolist())) == len(row)
        assert not set(row.tolist()) & pos[u]
        assert row.min() >= 0 and row.max() < s["meta"]["num_items"]


# ---------------------------------------------------------------- Melon

def tiny_melon(tmp_path):
    playlists = {
        100: [1, 2, 3, 2],      # duplicate 2
        101: [3, 1, 4, 9, 8],   # 4: unparseable date, 9: not in song_meta
        102: [5, 1, 3, 8],      # 5: seen once -> rare with min_item_count 2
        103: [2, 7],            # 7 rare -> one song left -> dropped
        104: [6, 6, 1],         # 6 only here (twice, deduped to once) -> rare -> one song left -> dropped
    }
    dates = {1: "20050000", 2: "20100101", 3: "20100101", 4: "00000000", 5: "19991231", 6: "20200101",
             7: "20200101", 8: "19800101"}
    return write_melon(tmp_path / "melon", playlists, dates)


def test_melon_filter_counts_and_maps(tmp_path):
    meta = split(tiny_melon(tmp_path), str(tmp_path / "out"), min_item_count=2, num_test_neg=1, verbose=False)
    st = meta["stats"]
    assert (st["raw_users"], st["raw_items"], st["raw_interactions"]) == (5, 9, 18)
    assert st["duplicates_removed"] == 2
    assert (st["dropped_bad_date_songs"], st["dropped_bad_date_interactions"]) == (1, 1)
    assert (st["dropped_unknown_songs"], st["dropped_unknown_interactions"]) == (1, 1)
    assert st["dropped_rare_items"] == 3          # songs 5, 6 and 7
    assert st["dropped_short_users"] == 2         # playlists 103, 104
    assert (meta["num_users"], meta["num_items"]) == (3, 4)
    assert st["interactions"] == 9 and meta["num_train"] == 6
    assert st["density"] == pytest.approx(9 / 12)
    assert meta["user_ids"] == [100, 101, 102] and meta["item_ids"] == [1, 2, 3, 8]
    assert meta["format"] == "melon" and meta["name"] == "melon" and meta["seed"] == 42
    assert meta["source"] == str(tmp_path / "melon" / "train.json")
    assert meta["song_meta"] == str(tmp_path / "melon" / "song_meta.json")
    assert meta["filters"] == {"min_item_count": 2, "min_user_items": 2, "test_item": "latest"}
    assert meta["has_val"] is False and meta["num_test_neg"] == 1
    s = read_split(tmp_path / "out", "melon")
    assert s["meta"] == meta
    # train sorted by user, then playlist order; timestamps are release dates (00 month/day read as 01)
    jan1980, jan2005, jan2010 = 315532800, 1104537600, 1262304000
    assert s["train"].tolist() == [[0, 0, 1, jan2005], [0, 2, 1, jan2010], [1, 0, 1, jan2005], [1, 3, 1, jan1980],
                                   [2, 0, 1, jan2005], [2, 3, 1, jan1980]]
    # playlist 100: songs 2 and 3 tie on the latest date -> the first in playlist order (2)
    assert s["test"].tolist() == [[0, 1, 1, jan2010], [1, 2, 1, jan2010], [2, 2, 1, jan2010]]
    check_negatives(s)


def test_melon_release_dates(tmp_path):
    dates = {1: "20050000", 2: "20050100", 3: "20041231", 4: "20101399", 5: "", 6: "2005",
             7: "20050230", 8: "00000000", 9: "20000229"}
    playlists = {1: [3, 1, 4, 5], 2: [1, 2, 6, 7], 3: [8, 9, 3], 4: [2, 3]}
    meta = split(write_melon(tmp_path / "d", playlists, dates), str(tmp_path / "out"), min_item_count=1,
                 num_test_neg=1, verbose=False)
    assert meta["stats"]["dropped_bad_date_songs"] == 5   # 4, 5, 6, 7, 8
    assert meta["item_ids"] == [3, 1, 2, 9]
    s = read_split(tmp_path / "out", "d")
    held = [meta["item_ids"][i] for i in s["test"][:, 1]]
    # 1 (2005-00-00) and 2 (2005-01-00) both read as 2005-01-01: the first in playlist order wins
    assert held == [1, 1, 3, 2]
    assert s["test"][0, 3] == 1104537600


def test_melon_duplicate_test_song_never_in_train(tmp_path):
    playlists = {7: [1, 3, 2, 3, 1, 3], 8: [3, 1, 3], 9: [4, 1]}
    dates = {1: "20000101", 2: "20010101", 3: "20200101", 4: "19990101"}
    meta = split(write_melon(tmp_path / "d", playlists, dates), str(tmp_path / "out"), min_item_count=1,
                 num_test_neg=1, verbose=False)
    assert meta["stats"]["duplicates_removed"] == 4
    s = read_split(tmp_path / "out", "d")
    assert s["test"][:, 1].tolist() == [meta["item_ids"].index(3)] * 2 + [meta["item_ids"].index(1)]
    assert s["train"][:, :2].tolist() == [[0, 0], [0, 2], [1, 0], [2, 3]]


def random_melon(tmp_path, seed=0, playlists=300, songs=200):
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.0, songs) + 0.05
    popularity /= popularity.sum()
    data = {1000 + p: rng.choice(songs, rng.integers(1, 30), p=popularity).tolist() for p in range(playlists)}
    dates = {s: f"{rng.integers(1990, 2000)}{rng.integers(0, 3):02d}{rng.integers(0, 3):02d}" for s in range(songs)}
    return write_melon(tmp_path / "rand", data, dates), data, dates


def test_melon_properties(tmp_path):
    path, data, dates = random_melon(tmp_path)
    meta = split(path, str(tmp_path / "out"), min_item_count=3, num_test_neg=20, verbose=False)
    s = read_split(tmp_path / "out", "rand")
    users, items = meta["num_users"], meta["num_items"]
    assert s["test"][:, 0].tolist() == list(range(users))
    train = s["train"]
    assert np.all(np.diff(train[:, 0]) >= 0)
    assert len({(u, i) for u, i in train[:, :2].tolist()}) == len(train) == meta["num_train"]
    assert set(train[:, 0].tolist()) == set(range(users))
    assert set(train[:, 1].tolist()) | set(s["test"][:, 1].tolist()) == set(range(items))
    check_negatives(s)

    def day(song):
        d = dates[song]
        return d[:4] + max(d[4:6], "01") + max(d[6:8], "01")
    for u, item, _, _ in s["test"].tolist():
        kept = [song for song in dict.fromkeys(data[meta["user_ids"][u]]) if song in meta["item_ids"]]
        latest = max(day(song) for song in kept)
        assert item not in train[train[:, 0] == u, 1]
        assert meta["item_ids"][item] == next(song for song in kept if day(song) == latest)
        order = [meta["item_ids"][i] for i in train[train[:, 0] == u, 1]]
        assert order == [song for song in kept if song != meta["item_ids"][item]]


def test_negatives_seeded(tmp_path):
    path, _, _ = random_melon(tmp_path)
    runs = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        split(path, str(tmp_path / label), min_item_count=3, num_test_neg=20, seed=seed, verbose=False)
        with open(tmp_path / label / "rand.test.negative") as f:
            runs[label] = f.read()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_negatives_exhaust_unseen_items(tmp_path):
    playlists = {1: [1, 2, 3], 2: [4, 5, 6], 3: [1, 6, 2, 5]}
    dates = {i: "20000101" for i in range(1, 7)}
    split(write_melon(tmp_path / "d", playlists, dates), str(tmp_path / "out"), min_item_count=1, num_test_neg=2,
          verbose=False)
    s = read_split(tmp_path / "out", "d")
    pos = positives(s)
    for (u, _), row in zip(*s["test_negative"]):
        if u == 2:
            assert sorted(row.tolist()) == sorted(set(range(6)) - pos[u])
    check_negatives(s)


def test_test_item_last_and_random(tmp_path):
    path, data, _ = random_melon(tmp_path)
    meta = split(path, str(tmp_path / "last"), min_item_count=3, test_item="last", num_test_neg=5, verbose=False)
    s = read_split(tmp_path / "last", "rand")
    for u, item, _, _ in s["test"].tolist():
        kept = [song for song in dict.fromkeys(data[meta["user_ids"][u]]) if song in meta["item_ids"]]
        assert meta["item_ids"][item] == kept[-1]
    split(path, str(tmp_path / "r1"), min_item_count=3, test_item="random", num_test_neg=5, verbose=False)
    split(path, str(tmp_path / "r2"), min_item_count=3, test_item="random", num_test_neg=5, verbose=False)
    r1, r2 = read_split(tmp_path / "r1", "rand"), read_split(tmp_path / "r2", "rand")
    assert r1["test"].tolist() == r2["test"].tolist()
    assert r1["test"].tolist() != s["test"].tolist()
    check_negatives(r1)


def test_val(tmp_path):
    path, _, _ = random_melon(tmp_path)
    meta = split(path, str(tmp_path / "out"), min_item_count=3, num_test_neg=10, val=True, verbose=False)
    assert meta["has_val"] is True and meta["filters"]["min_user_items"] == 3
    s = read_split(tmp_path / "out", "rand")
    assert len(s["val"]) == len(s["test"]) == meta["num_users"]
    assert meta["num_train"] + 2 * meta["num_users"] == meta["stats"]["interactions"]
    test, val = s["test"], s["val"]
    assert np.all(test[:, 1] != val[:, 1])
    assert np.all(val[:, 3] <= test[:, 3])          # val is the latest of what remained after the test item
    for u in range(meta["num_users"]):
        train_items = s["train"][s["train"][:, 0] == u]
        assert len(train_items) >= 1
        assert val[u, 1] not in train_items[:, 1] and test[u, 1] not in train_items[:, 1]
        assert val[u, 3] >= train_items[:, 3].max()
    check_negatives(s, "test")
    check_negatives(s, "val")
    assert not np.array_equal(s["test_negative"][1], s["val_negative"][1])


# ---------------------------------------------------------------- delimited

ROWS = [("u1", "a", 5, 300), ("u1", "b", 3, 500), ("u1", "c", 4, 500), ("u2", "b", 1, 100),
        ("u2", "a", 2, 200), ("u1", "b", 1, 900), ("u3", "c", 2, 50), ("u2", "d", 3, 150)]


@pytest.mark.parametrize("sep", ["\t", ",", "::", " ", "  "])
@pytest.mark.parametrize("header", [False, True])
def test_delimited_separators(tmp_path, sep, header):
    lines = ([sep.join(["user", "item", "rating", "timestamp"])] if header else []) + \
        [sep.join(map(str, row)) for row in ROWS]
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(lines) + "\n")
    meta = split(str(path), str(tmp_path / "out"), name="r", num_test_neg=1, verbose=False)
    st = meta["stats"]
    assert (st["raw_users"], st["raw_items"], st["raw_interactions"], st["duplicates_removed"]) == (3, 4, 8, 1)
    assert st["dropped_short_users"] == 1              # u3 has one item
    assert meta["user_ids"] == ["u1", "u2"] and meta["item_ids"] == ["a", "b", "c", "d"]
    s = read_split(tmp_path / "out", "r")
    # u1: b and c tie at 500 (the later duplicate b@900 is dropped) -> the last in file order (c)
    assert s["test"].tolist() == [[0, 2, 4, 500], [1, 0, 2, 200]]
    assert s["train"].tolist() == [[0, 0, 5, 300], [0, 1, 3, 500], [1, 1, 1, 100], [1, 3, 3, 150]]
    assert meta["format"] == "delimited" and meta["filters"]["min_item_count"] == 1


def test_delimited_two_columns_integer_ids(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("10,7\r\n10,3\r\n\r\n20,7\r\n20,9\r\n10,9\r\n20,5\r\n")
    meta = split(str(path), str(tmp_path / "out"), num_test_neg=1, verbose=False)
    assert meta["name"] == "pairs"
    assert meta["user_ids"] == [10, 20] and meta["item_ids"] == [7, 3, 9, 5]
    s = read_split(tmp_path / "out", "pairs")
    # no timestamp: file order is the time, so the held-out is the user's last row
    assert s["test"].tolist() == [[0, 2, 1, 4], [1, 3, 1, 5]]
    assert s["train"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1], [1, 0, 1, 2], [1, 2, 1, 3]]


def test_a_file_without_timestamps_gets_a_note(tmp_path, capsys):
    path = tmp_path / "pairs.tsv"
    path.write_text("1\t7\n1\t3\n2\t7\n2\t9\n")
    split(str(path), str(tmp_path / "out"), num_test_neg=1)
    assert "has no timestamps" in capsys.readouterr().out
    split(str(path), str(tmp_path / "out"), num_test_neg=1, test_item="random")
    assert "has no timestamps" not in capsys.readouterr().out
    path.write_text("1\t7\t1\t5\n1\t3\t1\t4\n2\t7\t1\t5\n2\t9\t1\t6\n")
    split(str(path), str(tmp_path / "out"), num_test_neg=1)
    assert "has no timestamps" not in capsys.readouterr().out


def test_lastfm(tmp_path):
    if not os.path.isdir(os.path.dirname(LASTFM)):
        pytest.skip("../shared/data/lastfm-hetrec2011 is absent")
    meta = split(LASTFM, str(tmp_path), name="lastfm", verbose=False)
    st = meta["stats"]
    assert (st["raw_users"], st["raw_items"], st["raw_interactions"]) == (1892, 17632, 92834)
    assert st["duplicates_removed"] == 0
    assert st["dropped_short_users"] == 8         # 8 users listen to a single artist
    assert meta["num_users"] == 1884 and st["interactions"] == 92834 - 8
    s = read_split(tmp_path, "lastfm")
    assert meta["num_train"] + meta["num_users"] == st["interactions"] == len(s["train"]) + len(s["test"])
    with open(LASTFM) as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    last = {}
    for user, artist, weight in rows:
        last[int(user)] = (int(artist), int(weight))
    for u, item, weight, _ in s["test"].tolist():
        assert last[meta["user_ids"][u]] == (meta["item_ids"][item], weight)
    check_negatives(s)


# ---------------------------------------------------------------- errors (CLI)

def run_split(*args, process=False):
    """split.py's command line, in this process, or in a process of its own with `process`."""
    if not process:
        return run_script("split.py", *args)
    return subprocess.run([sys.executable, "split.py", *map(str, args)], cwd=REPO, capture_output=True, text=True)


def assert_error(result, out_dir, *names):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert str(name) in lines[0]
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == []


def test_cli_ok(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::5::{i}\n" for u in range(3) for i in range(u, u + 4)))
    result = run_split("--input", path, "--out_dir", tmp_path / "out", "--name", "ml", "--num_test_neg", 2,
                       process=True)
    assert result.returncode == 0 and result.stderr == ""
    assert "3 users x 6 items" in result.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["ml.meta.json", "ml.test.negative", "ml.test.rating",
                                                    "ml.train.rating"]


def test_error_missing_file(tmp_path):
    missing = tmp_path / "nope.dat"
    assert_error(run_split("--input", missing, "--out_dir", tmp_path / "out"), tmp_path / "out", missing)
    path = write_melon(tmp_path / "m", {1: [1, 2]}, {1: "20000101"})
    os.remove(tmp_path / "m" / "song_meta.json")
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out"), tmp_path / "out", "song_meta.json")


@pytest.mark.parametrize("which", ["train.json", "song_meta.json"])
def test_error_malformed_json(tmp_path, which):
    path = write_melon(tmp_path / "m", {1: [1, 2]}, {1: "20000101", 2: "20000101"})
    (tmp_path / "m" / which).write_text('[{"id": 1,\n "songs": [1, 2}]')
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out"), tmp_path / "out", which, "line 2")


@pytest.mark.parametrize("record, message", [
    ({"songs": [1, 2]}, "'id'"),
    ({"id": 2}, "'songs'"),
    ({"id": "2", "songs": [1, 2]}, "'id'"),
    ({"id": 2, "songs": [1, "x"]}, "'songs'"),
    ({"id": 2, "songs": [1, 2.5]}, "'songs'"),
    ([2, [1, 2]], "not a JSON object"),
])
def test_error_bad_playlist(tmp_path, record, message):
    path = write_melon(tmp_path / "m", {1: [1, 2]}, {1: "20000101", 2: "20000101"})
    with open(path) as f:
        records = json.load(f)
    records.append(record)
    with open(path, "w") as f:
        json.dump(records, f)
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out"), tmp_path / "out", "train.json",
                 "record 1", message)


@pytest.mark.parametrize("record, message", [({"issue_date": "20000101"}, "'id'"), ({"id": 3}, "'issue_date'"),
                                             ({"id": 3.0, "issue_date": "20000101"}, "'id'")])
def test_error_bad_song(tmp_path, record, message):
    path = write_melon(tmp_path / "m", {1: [1, 2]}, {1: "20000101", 2: "20000101"})
    meta_path = tmp_path / "m" / "song_meta.json"
    records = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(records + [record]))
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out"), tmp_path / "out", "song_meta.json",
                 "record 2", message)


@pytest.mark.parametrize("text, line", [
    ("1\t2\t3\n1\t3\n", 2),                        # too few columns
    ("user\titem\trating\n1\t2\t3\n\n1\t3\tx\n", 4),  # non-numeric rating, after a header and a blank line
    ("1,2,3,4\n1,3,5,1.5\n", 2),                   # non-integer timestamp
    ("1::2::3::4\n1::3::5::6::7\n", 2),            # too many columns
    ("1 2\n\t\n 3\n", 3),                          # one field
    ("1 2 3 4 5\n", 1),                            # too many columns on the first line
])
def test_error_malformed_line(tmp_path, text, line):
    path = tmp_path / "bad.dat"
    path.write_text(text)
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out"), tmp_path / "out", path, f"line {line}:")


def test_error_empty_after_filtering(tmp_path):
    path = write_melon(tmp_path / "m", {1: [1, 2], 2: [2, 3]}, {1: "20000101", 2: "20000101", 3: "20000101"})
    result = run_split("--input", path, "--out_dir", tmp_path / "out")
    assert_error(result, tmp_path / "out", "no playlists left", "min_item_count=25", "min_user_items=2")
    empty = tmp_path / "empty.dat"
    empty.write_text("\n")
    assert_error(run_split("--input", empty, "--out_dir", tmp_path / "out"), tmp_path / "out", empty)


def test_error_too_many_negatives(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,x\na,y\nb,x\nb,z\nc,w\nc,x\n")
    result = run_split("--input", path, "--out_dir", tmp_path / "out", "--num_test_neg", 3)
    assert_error(result, tmp_path / "out", "--num_test_neg", "user a")


@pytest.mark.parametrize("flags, flag", [
    (["--num_test_neg", "0"], "--num_test_neg"),
    (["--min_item_count", "-1"], "--min_item_count"),
    (["--min_user_items", "1"], "--min_user_items"),
    (["--min_user_items", "2", "--val"], "--min_user_items"),
    (["--min_item_count", "many"], "--min_item_count"),
    (["--test_item", "first"], "--test_item"),
    (["--seed", "-3"], "--seed"),
])
def test_error_bad_flag(tmp_path, flags, flag):
    path = tmp_path / "r.csv"
    path.write_text("a,x\na,y\n")
    assert_error(run_split("--input", path, "--out_dir", tmp_path / "out", *flags), tmp_path / "out", flag)


def test_error_leaves_previous_split_alone(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,x\na,y\nb,x\nb,y\nb,z\nc,w\nc,x\n")
    assert run_split("--input", path, "--out_dir", tmp_path / "out", "--num_test_neg", 1).returncode == 0
    before = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")}
    assert run_split("--input", path, "--out_dir", tmp_path / "out", "--num_test_neg", 2).returncode == 2
    assert {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")} == before


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    path.write_text("a,x\na,y\nb,x\nb,z\n")

    def disk_full(path, *args):
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(split_module, "write_negatives", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        split(str(path), str(tmp_path / "out"), num_test_neg=1, verbose=False)
    assert os.listdir(tmp_path / "out") == []


def test_files_saved_with_a_utf8_byte_order_mark_read_as_without(tmp_path):
    """train.json, song_meta.json and delimited files saved with a UTF-8 BOM (as some Windows editors do) give the
    same split as without."""
    path, _, _ = random_melon(tmp_path)
    plain = split(path, str(tmp_path / "plain"), name="m", min_item_count=2, verbose=False)
    for name in ("train.json", "song_meta.json"):
        file = os.path.join(os.path.dirname(path), name)
        with open(file, "rb") as f:
            content = f.read()
        with open(file, "wb") as f:
            f.write(b"\xef\xbb\xbf" + content)
    marked = split(path, str(tmp_path / "marked"), name="m", min_item_count=2, verbose=False)
    assert {k: v for k, v in marked.items() if k != "source"} == {k: v for k, v in plain.items() if k != "source"}
    for suffix in ("train.rating", "test.rating", "test.negative"):
        assert (tmp_path / "plain" / f"m.{suffix}").read_bytes() == (tmp_path / "marked" / f"m.{suffix}").read_bytes()

    lines = "\n".join(",".join(map(str, row)) for row in ROWS) + "\n"
    for header in ("", "user,item,rating,timestamp\n"):
        (tmp_path / "r.csv").write_text("\ufeff" + header + lines, encoding="utf-8")
        meta = split(str(tmp_path / "r.csv"), str(tmp_path / "csv"), name="r", num_test_neg=1, verbose=False)
        assert meta["user_ids"] == ["u1", "u2"] and meta["stats"]["raw_interactions"] == 8
