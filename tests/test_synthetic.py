"""synthetic.py: the Melon schema, realistic statistics, determinism and its command line."""
import datetime
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import synthetic
from conftest import run_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYLIST_FIELDS = {"id": int, "plylst_title": str, "tags": list, "songs": list, "like_cnt": int, "updt_date": str}
SONG_FIELDS = {"id": int, "album_id": int, "album_name": str, "artist_id_basket": list, "artist_name_basket": list,
               "song_name": str, "song_gn_gnr_basket": list, "song_gn_dtl_gnr_basket": list, "issue_date": str}
HANGUL = re.compile("[\uac00-\ud7a3]")
LATIN = re.compile("[A-Za-z]")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The default data set (4,000 playlists x 25,000 songs, seed 42), generated once."""
    train_path, meta_path = synthetic.generate(str(tmp_path_factory.mktemp("sample")))
    return load(train_path), load(meta_path)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def test_default_sizes_and_returned_paths(sample, tmp_path):
    playlists, songs = sample
    assert len(playlists) == 4_000 and len(songs) == 25_000
    assert synthetic.SCALES["melon"] == (115_071, 707_989)
    paths = synthetic.generate(str(tmp_path), playlists=30, songs=200)
    assert paths == (str(tmp_path / "train.json"), str(tmp_path / "song_meta.json"))
    assert len(load(paths[0])) == 30 and len(load(paths[1])) == 200


def test_every_field_present_with_its_type_and_nothing_else(sample):
    playlists, songs = sample
    for playlist in playlists:
        assert playlist.keys() == PLAYLIST_FIELDS.keys()
        assert all(isinstance(playlist[k], t) for k, t in PLAYLIST_FIELDS.items())
        assert is_int(playlist["id"]) and is_int(playlist["like_cnt"]) and playlist["like_cnt"] >= 0
        assert all(isinstance(tag, str) and tag for tag in playlist["tags"]) and playlist["tags"]
        assert all(is_int(s) for s in playlist["songs"])
    for song in songs:
        assert song.keys() == SONG_FIELDS.keys()
        assert all(isinstance(song[k], t) for k, t in SONG_FIELDS.items())
        assert is_int(song["album_id"])
        assert all(is_int(a) for a in song["artist_id_basket"])
        assert all(isinstance(a, str) for a in song["artist_name_basket"])
        assert len(song["artist_id_basket"]) == len(song["artist_name_basket"]) >= 1
        assert all(re.fullmatch(r"GN\d\d00", g) for g in song["song_gn_gnr_basket"])
        assert all(re.fullmatch(r"GN\d\d(?!00)\d\d", g) for g in song["song_gn_dtl_gnr_basket"])
    assert [song["id"] for song in songs] == list(range(len(songs)))


def test_dates(sample):
    playlists, songs = sample
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.000", p["updt_date"]) for p in playlists)
    updated = [datetime.datetime.strptime(p["updt_date"], "%Y-%m-%d %H:%M:%S.000") for p in playlists]
    assert min(updated).year >= 2005 and max(updated).year <= 2020

    dates = [song["issue_date"] for song in songs]
    assert all(re.fullmatch(r"\d{8}", d) for d in dates)
    valid, zero, bad = [], [], []
    for d in dates:
        try:
            valid.append(datetime.datetime.strptime(d, "%Y%m%d"))
        except ValueError:
            partial = 1970 <= int(d[:4]) <= 2020 and (d[4:] == "0000" or (d[6:] == "00" and "01" <= d[4:6] <= "12"))
            (zero if partial else bad).append(d)
    assert 0.01 < len(zero) / len(dates) < 0.04
    assert any(d.endswith("0000") for d in zero) and any(d[4:6] != "00" for d in zero)
    assert 1 <= len(bad) <= 0.003 * len(dates)
    years = np.array([d.year for d in valid])
    assert years.min() < 1985 and years.max() == 2020
    assert (years >= 2010).sum() > (years // 10 == 199).sum() > (years < 1980).sum()


def test_playlist_songs_exist_and_lengths_are_melon_like(sample):
    playlists, songs = sample
    lengths = np.array([len(p["songs"]) for p in playlists])
    assert 42 <= lengths.mean() <= 50
    assert lengths.min() >= 1 and lengths.max() <= 200 and np.median(lengths) < lengths.mean()
    assert all(0 <= s < len(songs) for p in playlists for s in p["songs"])
    ids = [p["id"] for p in playlists]
    assert len(set(ids)) == len(ids) and max(ids) >= len(ids) and ids != sorted(ids)


def test_popularity_is_long_tailed(sample):
    playlists, songs = sample
    counts = np.sort(np.bincount([s for p in playlists for s in p["songs"]], minlength=len(songs)))[::-1]
    share = counts.cumsum() / counts.sum()
    assert share[len(songs) // 100] > 0.08 and share[len(songs) // 10] > 0.5
    assert 0.05 < (counts == 0).mean() < 0.3


def test_a_few_playlists_repeat_a_song(sample):
    playlists, _ = sample
    repeats = [len(p["songs"]) - len(set(p["songs"])) for p in playlists]
    assert 0.003 < np.count_nonzero(repeats) / len(playlists) < 0.03
    assert max(repeats) == 1


def test_unicode_text(sample):
    playlists, songs = sample
    for texts in ([p["plylst_title"] for p in playlists], [t for p in playlists for t in p["tags"]],
                  [s["song_name"] for s in songs], [s["album_name"] for s in songs],
                  [a for s in songs for a in s["artist_name_basket"]]):
        assert any(HANGUL.search(t) for t in texts) and any(LATIN.search(t) for t in texts)


def filtered(playlists, num_songs, min_count=25, min_songs=2):
    """split.py's default Melon filters: (playlist, song) pairs after dedupe, rare songs, short playlists."""
    lengths = [len(p["songs"]) for p in playlists]
    keys = np.unique(np.repeat(np.arange(len(playlists)), lengths) * num_songs
                     + np.concatenate([p["songs"] for p in playlists]))
    playlist, song = keys // num_songs, keys % num_songs
    keep = np.bincount(song, minlength=num_songs)[song] >= min_count
    playlist, song = playlist[keep], song[keep]
    keep = np.bincount(playlist, minlength=len(playlists))[playlist] >= min_songs
    return playlist[keep], song[keep]


def test_melon_filters_leave_a_sample_of_the_intended_size(sample):
    playlists, songs = sample
    playlist, song = filtered(playlists, len(songs))
    assert 3_400 <= len(np.unique(playlist)) <= 4_000
    assert 1_500 <= len(np.unique(song)) <= 3_000
    assert 95_000 <= len(song) <= 150_000


def test_co_occurrence_beats_popularity_and_random(sample):
    """Hold out one song per playlist; rank it against 99 random songs by item-item co-occurrence."""
    playlists, songs = sample
    playlist, song = filtered(playlists, len(songs))
    _, user = np.unique(playlist, return_inverse=True)
    _, item = np.unique(song, return_inverse=True)
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(len(user)), user))
    held = order[np.r_[0, np.flatnonzero(np.diff(user[order])) + 1]]
    train = np.ones(len(user), bool)
    train[held] = False
    x = np.zeros((user.max() + 1, item.max() + 1), np.float32)
    x[user[train], item[train]] = 1
    popularity = x.sum(0)
    normed = x / np.sqrt(np.maximum(popularity, 1))
    similarity = normed.T @ normed
    np.fill_diagonal(similarity, 0)
    candidates = np.c_[item[held], rng.integers(x.shape[1], size=(len(held), 99))]

    def hit_rate(scores):
        return ((scores[:, 1:] >= scores[:, :1]).sum(1) < 10).mean()

    knn = hit_rate(np.take_along_axis(x @ similarity, candidates, 1))
    pop = hit_rate(popularity[candidates])
    assert knn > 0.5 and knn > 2 * pop and knn > 3 * hit_rate(rng.random(candidates.shape))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def files(name, seed):
        paths = synthetic.generate(str(tmp_path / name), playlists=300, songs=2_000, seed=seed)
        return [open(path, "rb").read() for path in paths]

    first = files("a", 7)
    assert files("b", 7) == first
    other = files("c", 8)
    assert other[0] != first[0] and other[1] != first[1]


def run(*args, process=False):
    """synthetic.py's command line, in this process, or in a process of its own with `process`."""
    if not process:
        return run_script("synthetic.py", *args)
    return subprocess.run([sys.executable, os.path.join(REPO, "synthetic.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_writes_and_summarises(tmp_path):
    out = tmp_path / "out"
    result = run("--playlists", "200", "--songs", "1500", "--seed", "3", "--out", str(out), process=True)
    assert result.returncode == 0, result.stderr
    assert "200 playlists" in result.stdout and "1,500 songs" in result.stdout and str(out) in result.stdout
    assert sorted(os.listdir(out)) == ["genre_gn_all.json", "song_meta.json", "train.json"]
    assert load(out / "train.json") == load(synthetic.generate(str(tmp_path / "api"), playlists=200, songs=1500,
                                                               seed=3)[0])


@pytest.mark.parametrize("args, flag", [
    (["--playlists", "0"], "--playlists"),
    (["--songs", "-5"], "--songs"),
    (["--seed", "-1"], "--seed"),
    (["--scale", "huge"], "--scale"),
    (["--playlists", "many"], "--playlists"),
])
def test_bad_flags_give_one_line_and_status_2(tmp_path, args, flag):
    result = run(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert flag in result.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_out_gives_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run("--playlists", "20", "--songs", "100", "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_genre_file_names_every_code_the_songs_use(tmp_path):
    """genre_gn_all.json as in the real download: one JSON object, genre codes GNxx00 and detail codes GNxx01.. to
    Korean names, covering every code in song_meta.json's genre baskets."""
    synthetic.generate(str(tmp_path), playlists=50, songs=800, seed=1)
    with open(tmp_path / "genre_gn_all.json", encoding="utf-8") as f:
        names = json.load(f)
    assert names["GN0100"] == "발라드" and names["GN0101"] == "세부장르전체" and names["GN1700"] == "재즈"
    assert all(re.fullmatch(r"GN\d{4}", code) and isinstance(name, str) and name for code, name in names.items())
    assert list(names) == sorted(names)
    used = {code for song in load(tmp_path / "song_meta.json")
            for code in song["song_gn_gnr_basket"] + song["song_gn_dtl_gnr_basket"]}
    assert used and used <= names.keys()
