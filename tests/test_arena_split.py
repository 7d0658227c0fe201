"""split.py --arena / --questions / --exclude: the Arena's four kinds and proportions, questions as users without
held-out items, the official-files path, bad inputs (one line, exit status 2, nothing written)."""
import json
import random
import sys

import numpy as np
import pytest

import split
import synthetic

PLAYLISTS = 400


@pytest.fixture(scope="module")
def melon(tmp_path_factory):
    directory = tmp_path_factory.mktemp("melon")
    train_json, _ = synthetic.generate(str(directory), playlists=PLAYLISTS, songs=400)
    return train_json


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rated_users(path):
    return set(np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)[:, 0].tolist())


def test_arena_kinds_and_proportions(melon, tmp_path):
    meta = split.split(melon, str(tmp_path), "a", min_item_count=1, arena=True, verbose=False)
    questions, answers = load(tmp_path / "a.questions.json"), load(tmp_path / "a.answers.json")
    original = {p["id"]: p for p in load(melon)}
    assert meta["arena"]["kinds"] == {"songs": 24, "songs+tags": 40, "tags": 12, "title": 4}  # of 80 = 20% of 400
    # The Arena's partition: Python's random.shuffle seeded 777 over train.json's order, the last 20% asked.
    order = list(original)
    random.Random(777).shuffle(order)
    assert {q["id"] for q in questions} == set(order[320:])
    assert [a["id"] for a in answers] == [q["id"] for q in questions]
    seen = {kind: 0 for kind in meta["arena"]["kinds"]}
    for question, answer in zip(questions, answers):
        whole = original[question["id"]]
        assert question["plylst_title"] == whole["plylst_title"] and set(question) == set(whole)
        kind = ("songs" if question["songs"] else "tags") + ("+tags" if question["songs"] and question["tags"] else "")
        kind = kind if question["songs"] or question["tags"] else "title"
        if kind == "tags" and len(whole["tags"]) < 2 or kind == "songs" and len(whole["tags"]) < 2 and \
                question["songs"] and len(whole["songs"]) >= 2:
            continue  # half of one tag is none: the question cannot tell its kind
        seen[kind] += 1
        for field in ("songs", "tags"):
            shown, hidden, values = question[field], answer[field], whole[field]
            if shown:  # masked: half kept at random, the rest the answer
                assert len(shown) == len(values) // 2
                assert sorted(shown + hidden) == sorted(values)
            else:  # removed: the answer is the whole field (at most 100 songs, 10 tags)
                assert hidden == values[:{"songs": 100, "tags": 10}[field]] or len(values) // 2 == 0
    assert seen["songs"] >= 15 and seen["songs+tags"] >= 30 and seen["title"] >= 3
    # question playlists are users through their visible songs, with no held-out item
    user_of = {pid: u for u, pid in enumerate(meta["user_ids"])}
    asked = [user_of[q["id"]] for q in questions if q["id"] in user_of]
    assert len(asked) == meta["num_question_users"] > 40
    assert not set(asked) & rated_users(tmp_path / "a.test.rating")
    train = np.loadtxt(tmp_path / "a.train.rating", dtype=np.int64, delimiter="\t")
    for question in questions[:20]:
        if question["id"] in user_of:
            items = train[train[:, 0] == user_of[question["id"]], 1]
            known = {meta["item_ids"][i] for i in items}  # songs with unparseable dates are dropped
            assert known <= set(question["songs"]) and len(known) >= len(set(question["songs"])) - 1
    tags = load(tmp_path / "a.tags.json")
    assert len(tags["tags"]) == meta["num_users"]
    assert all(tags["tags"][user_of[q["id"]]] == q["tags"] for q in questions if q["id"] in user_of)
    # the same seeds give the same files
    split.split(melon, str(tmp_path), "b", min_item_count=1, arena=True, verbose=False)
    assert load(tmp_path / "b.answers.json") == answers


def test_official_questions_and_exclude(melon, tmp_path):
    split.split(melon, str(tmp_path), "a", min_item_count=1, arena=True, verbose=False)
    train_only = split.split(melon, str(tmp_path), "t", min_item_count=1, exclude=str(tmp_path / "a.questions.json"),
                             verbose=False)
    asked = {q["id"] for q in load(tmp_path / "a.questions.json")}
    assert not asked & set(train_only["user_ids"])
    # The official workflow: train.json without the questions, plus the question file as --questions.
    with open(tmp_path / "train.json", "w") as f:
        json.dump([p for p in load(melon) if p["id"] not in asked], f)
    (tmp_path / "song_meta.json").symlink_to(melon.replace("train.json", "song_meta.json"))
    meta = split.split(str(tmp_path / "train.json"), str(tmp_path), "o", min_item_count=1,
                       questions=[str(tmp_path / "a.questions.json")], verbose=False)
    assert meta["num_question_users"] > 40 and set(meta["user_ids"]) >= set(train_only["user_ids"])
    user_of = {pid: u for u, pid in enumerate(meta["user_ids"])}
    assert not {user_of[pid] for pid in asked if pid in user_of} & rated_users(tmp_path / "o.test.rating")
    assert not (tmp_path / "o.answers.json").exists()


def run_main(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["split.py", *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        split.run_cli(split.main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("content, message", [
    ('[{"id": 1, "songs": [1}]', "malformed JSON"),
    ('{"id": 1}', "expected a JSON list"),
    ('[{"id": 1, "songs": ["a"]}]', "'songs' must be a list of integer song ids"),
    ('[{"id": 1, "songs": [], "tags": "rock"}]', "'tags' must be a list of strings"),
    ('[{"id": 1, "songs": [], "plylst_title": 3}]', "'plylst_title' must be a string"),
    ('[{"id": 99999999, "songs": []}, {"id": 99999999, "songs": [1]}]', "record 1: playlist id 99999999 appears twice"),
])
def test_bad_question_files(melon, tmp_path, monkeypatch, capsys, content, message):
    questions = tmp_path / "q.json"
    questions.write_text(content)
    err = run_main(monkeypatch, capsys, "--input", melon, "--out_dir", tmp_path / "out", "--questions", questions)
    assert "q.json" in err and message in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_question_id_already_in_train_json(melon, tmp_path, monkeypatch, capsys):
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([{"id": load(melon)[3]["id"], "songs": []}]))
    err = run_main(monkeypatch, capsys, "--input", melon, "--out_dir", tmp_path / "out", "--questions", questions)
    assert "record 0" in err and "appears twice (also in" in err
    err = run_main(monkeypatch, capsys, "--input", tmp_path / "x.dat", "--arena")
    assert "--arena, --questions and --exclude need a Melon train.json" in err


def test_synthetic_val_json_runs_the_official_path(tmp_path):
    train_json, _ = synthetic.generate(str(tmp_path), playlists=200, songs=300, questions=40)
    questions, answers = load(tmp_path / "val.json"), load(tmp_path / "val_answers.json")
    assert len(questions) == 40 and [a["id"] for a in answers] == [q["id"] for q in questions]
    assert sum(not q["songs"] and not q["tags"] for q in questions) == 2  # 5% title only
    assert not {q["id"] for q in questions} & {p["id"] for p in load(train_json)}
    meta = split.split(train_json, str(tmp_path), "o", min_item_count=1, questions=[str(tmp_path / "val.json")],
                       verbose=False)
    assert meta["num_question_users"] == sum(bool(q["songs"]) for q in questions)
