"""Recommendations and similar songs: every song of the playlist excluded, best score first, original Melon ids
and names out; the CLI's one-line errors."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dataloader
import split
import synthetic
from conftest import REPO, run_script
from catalog import item_names
from runs import load_checkpoint, model_from_checkpoint
from scoring import recommend, similar_items
from model import NCF


@pytest.fixture(scope="module")
def melon(tmp_path_factory):
    """A small synthetic Melon data set split with a validation song per playlist, and a model trained briefly
    by main.py: (data directory, checkpoint, train.json records by id, song_meta.json records by id)."""
    root = tmp_path_factory.mktemp("melon")
    train_json, song_meta_json = synthetic.generate(str(root / "raw"), playlists=300, songs=1500, seed=1)
    split.split(train_json, str(root / "data"), "mel", min_item_count=5, val=True, verbose=False)
    trained = run_script("main.py", "--data_dir", root / "data", "--dataset", "mel", "--epochs", "2", "--batch_size",
                         "256", "--gpu", "cpu", "--wandb", "disabled", "--save_dir", root / "run")
    assert trained.returncode == 0, trained.stderr
    with open(train_json, encoding="utf-8") as f:
        playlists = {p["id"]: p for p in json.load(f)}
    with open(song_meta_json, encoding="utf-8") as f:
        songs = {s["id"]: s for s in json.load(f)}
    return str(root / "data"), str(root / "run" / "best.pt"), playlists, songs


def load_model(checkpoint):
    checkpoint = load_checkpoint(checkpoint)
    data = dataloader.load(checkpoint["config"]["data_dir"], checkpoint["config"]["dataset"])
    return model_from_checkpoint(checkpoint, data), data


def own_items(data_dir, name="mel"):
    """{user: set of items} over the train, val and test files of the split, read directly."""
    own = {}
    for part in ("train", "val", "test"):
        with open(os.path.join(data_dir, f"{name}.{part}.rating")) as f:
            for line in f:
                user, item = map(int, line.split("\t")[:2])
                own.setdefault(user, set()).add(item)
    return own


def run_evaluate(*args, process=False):
    """evaluate.py's command line, in this process, or in one of its own with `process`."""
    if not process:
        return run_script("evaluate.py", *args, "--gpu", "cpu")
    return subprocess.run([sys.executable, "evaluate.py", *args, "--gpu", "cpu"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, WANDB_MODE="disabled"))


def table_rows(out, header_start):
    """Whitespace-split rows of the table whose header line starts with `header_start`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start)) + 1
    stop = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return [line.split() for line in lines[start:stop]]


def test_recommendations_exclude_every_song_of_the_playlist_and_follow_the_scores(melon):
    data_dir, checkpoint, _, _ = melon
    model, data = load_model(checkpoint)
    own = own_items(data_dir)
    reference = copy.deepcopy(model).double().eval()
    for user in range(0, data.num_users, 10):
        items, scores = recommend(model, data, user, 10)
        with torch.no_grad():
            brute = reference(torch.full((data.num_items,), user), torch.arange(data.num_items))
        allowed = torch.ones(data.num_items, dtype=torch.bool)
        allowed[list(own[user])] = False
        assert len(items) == 10 and not own[user] & set(items.tolist())
        assert (scores[:-1] >= scores[1:]).all()
        assert torch.allclose(scores.double(), brute[items], atol=1e-4)
        allowed[items] = False
        assert scores[-1] >= brute[allowed].max() - 1e-4  # nothing left out scores higher
        # Asked for every item, it returns exactly those the playlist lacks: its train, val and test songs excluded.
        everything, _ = recommend(model, data, user, data.num_items)
        assert set(everything.tolist()) == set(range(data.num_items)) - own[user]


def test_recommend_cli_prints_original_song_ids_and_names(melon):
    data_dir, checkpoint, playlists, songs = melon
    model, data = load_model(checkpoint)
    item_ids = data.meta["item_ids"]
    for user in (7, data.num_users - 1):
        playlist_id = data.meta["user_ids"][user]
        result = run_evaluate("--checkpoint", checkpoint, "--recommend", str(playlist_id), "--k", "10",
                              process=user == 7)  # once as a user runs it: a process of its own
        assert result.returncode == 0, result.stderr
        out = result.stdout
        playlist = playlists[playlist_id]
        assert out.splitlines()[0].startswith(f'playlist {playlist_id} "{playlist["plylst_title"]}"')
        context = table_rows(out, "#")
        assert len(context) == 5 and all(int(row[1]) in playlist["songs"] for row in context)
        rows = table_rows(out, "rank")
        items, scores = recommend(model, data, user, 10)
        assert [int(row[1]) for row in rows] == [item_ids[i] for i in items.tolist()]
        assert [float(row[2]) for row in rows] == pytest.approx(scores.tolist(), abs=1e-3)
        assert not {int(row[1]) for row in rows} & set(playlist["songs"])
        for row in rows:
            song = songs[int(row[1])]
            line = " ".join(row[3:])
            assert song["song_name"] in line and ", ".join(song["artist_name_basket"]) in line
            assert song["issue_date"][:4] in line


def test_similar_items_are_nearest_by_cosine_without_the_song_itself(melon):
    _, checkpoint, _, songs = melon
    model, data = load_model(checkpoint)
    gmf, mlp = model.item_gmf.weight.detach(), model.item_mlp.weight.detach()
    for item in (0, 5, data.num_items - 1):
        items, similarity = similar_items(model, item, 10)
        cosine = (F.cosine_similarity(gmf, gmf[item:item + 1]) + F.cosine_similarity(mlp, mlp[item:item + 1])) / 2
        assert item not in items.tolist() and (similarity[:-1] >= similarity[1:]).all()
        assert torch.allclose(similarity, cosine[items], atol=1e-5)
        cosine[item] = -2
        cosine[items] = -2
        assert similarity[-1] >= cosine.max() - 1e-5

    song_id = data.meta["item_ids"][5]
    result = run_evaluate("--checkpoint", checkpoint, "--similar", str(song_id), "--k", "10")
    assert result.returncode == 0, result.stderr
    assert "nearest in the learned item embeddings (cosine)" in result.stdout
    rows = table_rows(result.stdout, "rank")
    items, _ = similar_items(model, 5, 10)
    assert [int(row[1]) for row in rows] == [data.meta["item_ids"][i] for i in items.tolist()]
    assert all(songs[int(row[1])]["song_name"] in " ".join(row[3:]) for row in rows)


def test_similar_items_of_a_gmf_model_use_its_one_embedding():
    torch.manual_seed(0)
    model = NCF(5, 50, 8, 1, "gmf")
    items, similarity = similar_items(model, 3, 49)
    cosine = F.cosine_similarity(model.item_gmf.weight, model.item_gmf.weight[3:4]).detach()
    assert set(items.tolist()) == set(range(50)) - {3}
    assert torch.allclose(similarity, cosine[items], atol=1e-6)


@pytest.mark.parametrize("flag", ["--recommend", "--similar"])
def test_unknown_ids_give_one_line_and_status_2(melon, flag):
    _, checkpoint, _, _ = melon
    result = run_evaluate("--checkpoint", checkpoint, flag, "987654321")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "987654321" in result.stderr


def test_recommend_and_similar_are_mutually_exclusive(melon):
    _, checkpoint, _, _ = melon
    result = run_evaluate("--checkpoint", checkpoint, "--recommend", "1", "--similar", "1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_lastfm_names_come_from_artists_dat(tmp_path):
    raw = tmp_path / "lastfm"
    raw.mkdir()
    (raw / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "".join(
        f"{user}\t{100 + (user * 3 + j) % 12}\t{10 + j}\n" for user in range(2, 12) for j in range(4)))
    (raw / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(
        f"{artist}\tBand Ä{artist}\thttp://www.last.fm/music/{artist}\t\n" for artist in range(100, 112)))
    meta = split.split(str(raw / "user_artists.dat"), str(tmp_path / "data"), "lfm", num_test_neg=5, verbose=False)
    catalog = item_names(meta, range(meta["num_items"]))
    assert {entry["id"] for entry in catalog.values()} == set(range(100, 112))
    assert all(entry == {"id": entry["id"], "artist": f"Band Ä{entry['id']}"} for entry in catalog.values())


def test_split_without_meta_uses_indices_as_ids(tiny_split, tmp_path):
    data_dir, name = tiny_split
    data = dataloader.load(data_dir, name)
    assert item_names(data.meta, [3, 7]) == {3: {"id": 3}, 7: {"id": 7}}
    checkpoint = str(tmp_path / "model.pt")
    config = {"data_dir": data_dir, "dataset": name, "latent_dim_mf": 8, "num_layers": 2, "model": "neumf", "topk": 10}
    torch.save({"config": config, "model": NCF(data.num_users, data.num_items, 8, 2).state_dict(), "epoch": 0},
               checkpoint)
    model, _ = load_model(checkpoint)
    result = run_evaluate("--checkpoint", checkpoint, "--recommend", "3", "--k", "5")
    assert result.returncode == 0, result.stderr
    assert [int(row[1]) for row in table_rows(result.stdout, "rank")] == recommend(model, data, 3, 5)[0].tolist()
    assert run_evaluate("--checkpoint", checkpoint, "--recommend", str(data.num_users)).returncode == 2


def test_genres_are_named_from_genre_gn_all_json(melon, tmp_path):
    """Genre codes show as the names in genre_gn_all.json beside song_meta.json (the code where it has no name, or
    where there is no such file), in --recommend, item_names and the run's results.md."""
    data_dir, checkpoint, _, songs = melon
    _, data = load_model(checkpoint)
    song_meta = data.meta["song_meta"]
    with open(os.path.join(os.path.dirname(song_meta), "genre_gn_all.json"), encoding="utf-8") as f:
        names = json.load(f)
    catalog = item_names(data.meta, range(50))
    for entry in catalog.values():
        assert entry["genre"] == ", ".join(names[code] for code in songs[entry["id"]]["song_gn_gnr_basket"])
    assert any("발라드" in entry["genre"] or "댄스" in entry["genre"] for entry in catalog.values())
    with open(os.path.join(os.path.dirname(checkpoint), "results.md"), encoding="utf-8") as f:
        report = f.read()
    assert "GN" not in report and any(name in report for name in set(names.values()))

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "song_meta.json").write_bytes(open(song_meta, "rb").read())
    coded = item_names(dict(data.meta, song_meta=str(bare / "song_meta.json")), range(50))
    assert all(entry["genre"] == ", ".join(songs[entry["id"]]["song_gn_gnr_basket"]) for entry in coded.values())
    partial = dict(list(names.items())[:3])
    (bare / "genre_gn_all.json").write_text("\ufeff" + json.dumps(partial, ensure_ascii=False), encoding="utf-8")
    mixed = item_names(dict(data.meta, song_meta=str(bare / "song_meta.json")), range(50))
    assert all(entry["genre"] == ", ".join(partial.get(c, c) for c in songs[entry["id"]]["song_gn_gnr_basket"])
               for entry in mixed.values())
    (bare / "genre_gn_all.json").write_text("[1, 2", encoding="utf-8")
    from utils import InputError
    with pytest.raises(InputError, match="genre_gn_all.json: malformed JSON"):
        item_names(dict(data.meta, song_meta=str(bare / "song_meta.json")), range(5))
