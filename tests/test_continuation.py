"""Playlist continuation: evaluate.py --continue / --playlist end to end on a small Arena split, fold-in moving a
new playlist's top songs toward its songs' neighbours, the tag/title fallback, bad input."""
import json
import re
import sys

import numpy as np
import pytest
import torch

import continuation
import dataloader
import evaluate
import main
import split
import synthetic
from arena import arena_score, check_arena_results
from model import NCF
from scoring import similar_items


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A small synthetic Melon set, its Arena split and a NeuMF trained on it for two epochs by main.py."""
    root = tmp_path_factory.mktemp("arena")
    train_json, _ = synthetic.generate(str(root / "raw"), playlists=500, songs=600, seed=3)
    split.split(train_json, str(root / "data"), "ar", min_item_count=8, arena=True, verbose=False)
    main.main(["--data_dir", str(root / "data"), "--dataset", "ar", "--epochs", "1", "--batch_size", "256",
               "--gpu", "cpu", "--wandb", "disabled", "--save_dir", str(root / "run")])
    return root


def run_evaluate(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--gpu", "cpu", *map(str, argv)])
    code = 0
    try:
        evaluate.run_cli(evaluate.main)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_continue_writes_valid_results_and_prints_the_score_last(arena, monkeypatch, capsys):
    data = arena / "data"
    code, out, err = run_evaluate(monkeypatch, capsys, "--checkpoint", arena / "run" / "best.pt", "--continue",
                                  data / "ar.questions.json", "--out", arena / "results.json", "--answers",
                                  data / "ar.answers.json")
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"song nDCG@100 \d\.\d{4} tag nDCG@10 \d\.\d{4} score \d\.\d{4}", last)
    questions, results = load(data / "ar.questions.json"), load(arena / "results.json")
    check_arena_results(results, [q["id"] for q in questions])
    assert [r["id"] for r in results] == [q["id"] for q in questions]
    for question, result in zip(questions, results):
        assert not set(result["songs"]) & set(question["songs"]) and not set(result["tags"]) & set(question["tags"])
    song, tag, score = arena_score(results, load(data / "ar.answers.json"))
    assert last == f"song nDCG@100 {song:.4f} tag nDCG@10 {tag:.4f} score {score:.4f}"
    assert "songs of the questions are unknown to the model" in out  # songs filtered out of the split
    # main.py scored its best checkpoint the same way (the run's results.json)
    assert load(arena / "run" / "results.json")["arena"]["score"] == pytest.approx(score)
    # the official workflow's files have no answers: the same command without --answers
    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", arena / "run" / "best.pt", "--continue",
                                data / "ar.questions.json", "--out", arena / "plain.json")
    assert code == 0 and load(arena / "plain.json") == results and "score" not in out.splitlines()[-1]


def test_playlist_new_and_known(arena, monkeypatch, capsys):
    meta = load(arena / "data" / "ar.meta.json")
    known = meta["user_ids"][0]
    new = [{"id": -5, "plylst_title": "새 목록", "tags": [], "songs": meta["item_ids"][:3] + [10 ** 9]},
           {"id": known, "plylst_title": "", "tags": ["x"], "songs": meta["item_ids"][3:5]}]
    (arena / "new.json").write_text(json.dumps(new))
    code, out, err = run_evaluate(monkeypatch, capsys, "--checkpoint", arena / "run" / "best.pt", "--playlist",
                                  arena / "new.json", "--k", 5)
    assert code == 0, err
    assert 'playlist -5 "새 목록" (new: folded in; 4 songs, 0 tags): top 5 songs' in out
    assert f"playlist {known} (trained on; 2 songs, 1 tag)" in out
    assert out.count("tags: ") == 2 and "note: 1 song of the playlists is unknown to the model" in out


@pytest.mark.parametrize("content, flags, message", [
    ('[{"id": 1, "songs": []}, {"id": 1, "songs": []}]', (), "record 1: playlist id 1 appears twice"),
    ('{"questions": []}', (), "expected a JSON list of records"),
    ('[{"id": 1, "songs": [1], "tags": [2]}]', (), "'tags' must be a list of strings"),
    ('[{"id": 1, "songs": []}]', ("--answers", "QUESTIONS"), None),
])
def test_bad_input(arena, tmp_path, monkeypatch, capsys, content, flags, message):
    questions = tmp_path / "q.json"
    questions.write_text(content)
    answers_flags = [f if f != "QUESTIONS" else arena / "data" / "ar.answers.json" for f in flags]
    code, out, err = run_evaluate(monkeypatch, capsys, "--checkpoint", arena / "run" / "best.pt", "--continue",
                                  questions, "--out", tmp_path / "r.json", *answers_flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (message or "its playlist ids are not those of") in err
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_evaluate(monkeypatch, capsys, "--checkpoint", arena / "run" / "best.pt", "--continue",
                                questions)
    assert code == 2 and "--continue needs --out" in err


def test_fallback_uses_tags_and_title(arena):
    data = dataloader.load(str(arena / "data"), "ar")
    vocabulary = continuation.Vocabulary(data, str(arena / "data"))
    answering = continuation.Continuation(data, vocabulary, None)
    tags = load(arena / "data" / "ar.tags.json")["tags"]
    tag = tags[0][0]
    with_tag = {u for u, ts in enumerate(tags) if tag in ts}
    co_occurring = set(data.train_items[torch.isin(data.train_users, torch.tensor(sorted(with_tag)))].tolist())
    results, top, _, _ = answering.answer([{"id": 1, "songs": [], "tags": [tag], "plylst_title": ""}], 20, 10)
    assert set(top[0].tolist()) <= co_occurring and tag not in results[0]["tags"]
    popular = vocabulary.song_popularity.topk(20).indices
    assert set(top[0].tolist()) != set(popular.tolist())


def test_fold_in_moves_top_songs_toward_the_songs_neighbours():
    """Items in 4 clusters of 15 (GMF item vectors along one axis per cluster): a new playlist of 5 songs of
    cluster 2 starts from the mean user and, folded in, ranks its cluster's other songs first."""
    torch.manual_seed(0)
    model = NCF(num_users=8, num_items=60, latent_dim_mf=4, num_layers=1)
    cluster = torch.arange(60) // 15
    with torch.no_grad():
        model.item_gmf.weight.copy_(torch.eye(4)[cluster] + 0.05 * torch.randn(60, 4))
        model.user_gmf.weight.normal_(0, 0.1)
        model.item_mlp.weight.zero_()  # the neighbours: by the GMF vectors alone
        model.predict.weight[0, :4] = 1.0
    songs = torch.tensor([30, 31, 32, 33, 34])
    indptr = torch.tensor([0, 5])
    before = continuation.fold_in(model, indptr, songs, 60, steps=0)
    after = continuation.fold_in(model, indptr, songs, 60)

    def top(folded):
        with torch.no_grad():
            scores = folded.candidate_scorer()(torch.tensor([0]))[0]
        scores[songs] = float("-inf")
        return scores.topk(10).indices

    neighbours = similar_items(model, 30, 10)[0]
    assert (cluster[neighbours] == 2).all()
    assert (cluster[top(after)] == 2).all() and (cluster[top(before)] == 2).sum() < 10
    assert all(p.requires_grad for p in model.parameters())  # the model itself is left trainable
    assert np.allclose(model.item_gmf.weight.detach().numpy(), after.item_gmf.weight.detach().numpy())


def test_a_large_table_keeps_each_rows_most_probable_entries(monkeypatch):
    left, right = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 1, 2, 2])  # P(1|0) 2/3, P(0|0) 1/3, P(2|1) 1
    dense = continuation.conditional(left, right, 2, 3)
    assert torch.allclose(dense, torch.tensor([[1 / 3, 2 / 3, 0], [0, 0, 1]]))
    monkeypatch.setattr(continuation, "TABLE_ENTRIES", 2)
    monkeypatch.setattr(continuation, "TOP_TAGS", 1)
    top = continuation.conditional(left, right, 2, 3)
    assert top[0].tolist() == [[1], [2]]
    indptr, keys = torch.tensor([0, 1, 3]), torch.tensor([0, 0, 1])
    assert torch.allclose(continuation.spread(indptr, keys, top, 3), torch.tensor([[0, 2 / 3, 0], [0, 1 / 3, 1 / 2]]))
    assert torch.allclose(continuation.spread(indptr, keys, dense, 3),
                          torch.tensor([[1 / 3, 2 / 3, 0], [1 / 6, 1 / 3, 1 / 2]]))
