"""main.py --recipe arena on a small Arena split (recipe.py, blend.py): the method it validates is recorded in
best.pt and results.json and is evaluate.py --continue's default; the scored questions' answers play no part in
any choice; validation questions are carved as the Arena carves them; fold-in's loss falls."""
import json
import shutil

import pytest
import torch

import blend
import continuation
import dataloader
import main
import recipe
import split
import synthetic
from model import MF
from utils import InputError
from tests.test_continuation import load, run_evaluate


SMALL = {"MODELS": ({"model": "mf", "latent_dim_mf": 8, "num_neg": 4, "lr": 0.01},), "EPOCHS": 2, "EVAL_EVERY": 1,
         "ITEMKNN_GRID": recipe.ITEMKNN_GRID[::3], "PLAYLISTKNN_GRID": recipe.PLAYLISTKNN_GRID[:2],
         "IALS_GRID": tuple({**settings, "epochs": 4} for settings in recipe.IALS_GRID),
         "FOLD_IN_STEPS": (5, 20), "WEIGHTS": (0.0, 1.0)}


def arena_split(root):
    train_json, _ = synthetic.generate(str(root / "raw"), playlists=400, songs=500, seed=5)
    split.split(train_json, str(root / "data"), "ar", min_item_count=8, arena=True, verbose=False)
    return root / "data"


def run_recipe(data_dir, save_dir):
    """main.py --recipe arena with the recipe's searches cut down to what a test can afford."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL.items():
            patch.setattr(recipe, name, value)
        main.main(["--recipe", "arena", "--data_dir", str(data_dir), "--dataset", "ar", "--save_dir", str(save_dir)])
    return torch.load(save_dir / "best.pt", weights_only=True), load(save_dir / "results.json")


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """(data directory, run directory) of a small Arena split and the recipe run on it."""
    root = tmp_path_factory.mktemp("recipe")
    data_dir = arena_split(root)
    run_recipe(data_dir, root / "run")
    return data_dir, root / "run"


def test_the_chosen_method_is_recorded_and_answers_by_default(recipe_run, tmp_path, monkeypatch, capsys):
    data_dir, run = recipe_run
    checkpoint, results = torch.load(run / "best.pt", weights_only=True), load(run / "results.json")
    method = checkpoint["continuation"]
    assert method == results["continuation"] and method["name"] == "blend"
    assert results["choices"]["model"]["epochs"] == checkpoint["epoch"]
    assert set(results["choices"]["methods"]) == {"blend", "model", "neighbours", "itemknn", "playlistknn", "ials"}
    for name, grid in (("itemknn", SMALL["ITEMKNN_GRID"]), ("playlistknn", SMALL["PLAYLISTKNN_GRID"]),
                       ("ials", SMALL["IALS_GRID"])):  # each neighbour method's settings: its best alone
        tried = results["choices"][name]
        assert len(tried) == len(grid) and len({t["validation_score"] for t in tried}) == len(grid)
        best = max(tried, key=lambda t: t["validation_score"])
        assert method[name] == {key: value for key, value in best.items() if key != "validation_score"}
    questions = load(data_dir / "ar.questions.json")
    submitted = load(run / "submission.json")
    assert [r["id"] for r in submitted] == [q["id"] for q in questions]
    capsys.readouterr()

    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", run / "best.pt", "--continue",
                                data_dir / "ar.questions.json", "--out", tmp_path / "again.json", "--answers",
                                data_dir / "ar.answers.json")
    assert code == 0 and out.startswith("method: blend (validated by main.py --recipe arena)")
    assert load(tmp_path / "again.json") == submitted
    assert out.splitlines()[-1].endswith(f"score {results['arena']['score']:.4f}")
    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", run / "best.pt", "--continue",
                                data_dir / "ar.questions.json", "--out", tmp_path / "model.json", "--method", "model")
    assert code == 0 and out.startswith("method: model (--method, with the validated settings): songs model 1;")
    assert load(tmp_path / "model.json") != submitted
    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", run / "best.pt", "--continue",
                                data_dir / "ar.questions.json", "--out", tmp_path / "ials.json", "--method", "ials")
    assert code == 0 and out.startswith("method: ials (--method, with the validated settings): songs ials 1;")
    assert load(tmp_path / "ials.json") not in (submitted, load(tmp_path / "model.json"))
    code, _, err = run_evaluate(monkeypatch, capsys, "--checkpoint", run / "best.pt", "--method", "model")
    assert code == 2 and "--method goes with --continue or --playlist" in err


def test_the_scored_answers_play_no_part_in_any_choice(recipe_run, tmp_path):
    data_dir, first_run = recipe_run
    first, first_results = torch.load(first_run / "best.pt", weights_only=True), load(first_run / "results.json")
    path = data_dir / "ar.answers.json"
    original = path.read_text()
    answers = json.loads(original)
    questions = {q["id"]: q for q in load(data_dir / "ar.questions.json")}
    songs = sorted({s for q in questions.values() for s in q["songs"]})
    for answer in answers:  # other songs and tags than the playlist's own, all of them wrong
        answer["songs"] = [s for s in songs if s not in questions[answer["id"]]["songs"]][:5]
        answer["tags"] = ["not a tag"]
    path.write_text(json.dumps(answers))
    try:
        second, second_results = run_recipe(data_dir, tmp_path / "second")
    finally:
        path.write_text(original)
    assert second["continuation"] == first["continuation"]
    assert second_results["choices"] == first_results["choices"]
    assert all(torch.equal(second["model"][k], first["model"][k]) for k in first["model"])
    assert load(tmp_path / "second" / "submission.json") == load(first_run / "submission.json")
    assert second_results["arena"]["score"] < first_results["arena"]["score"]


def test_validation_questions_are_carved_from_training_playlists_only(recipe_run):
    data_dir, _ = recipe_run
    data = dataloader.load(str(data_dir), "ar")
    tags, titles = continuation.split_tags(data, str(data_dir))
    validation = recipe.carve(data, tags, titles)
    scored = {q["id"] for q in load(data_dir / "ar.questions.json")}
    carved = [q["id"] for q in validation.questions]
    assert carved and not scored & set(carved)
    user = {u: i for i, u in enumerate(data.meta["user_ids"])}
    item = {s: i for i, s in enumerate(data.meta["item_ids"])}
    for question, answer in zip(validation.questions, validation.answers):
        u = user[question["id"]]
        trained = set(validation.data.seen_items[validation.data.seen_indptr[u]:validation.data.seen_indptr[u + 1]]
                      .tolist())
        assert trained == {item[s] for s in question["songs"]}  # the hidden half is not trained on
        assert answer["songs"] and answer["tags"] and not set(answer["songs"]) & set(question["songs"])
    kinds = [(bool(q["songs"]), bool(q["tags"])) for q in validation.questions]
    assert {(True, False), (True, True), (False, True), (False, False)} == set(kinds)
    assert validation.data.train_users.shape[0] < data.train_users.shape[0]
    assert recipe.carve(data, tags, titles).questions == validation.questions  # seeded


def test_fold_in_loss_falls_for_mf():
    torch.manual_seed(0)
    model = MF(num_users=8, num_items=60, latent_dim_mf=4)
    with torch.no_grad():
        model.item_gmf.weight.copy_(torch.eye(4)[torch.arange(60) // 15] + 0.05 * torch.randn(60, 4))
    losses = []
    folded = continuation.fold_in(model, torch.tensor([0, 5]), torch.tensor([30, 31, 32, 33, 34]), 60, losses=losses)
    assert len(losses) == continuation.FOLD_IN["steps"] and losses[-1] < 0.8 * losses[0]
    with torch.no_grad():
        scores = folded.candidate_scorer()(torch.tensor([0]))[0]
    scores[30:35] = float("-inf")
    assert (scores.topk(10).indices // 15 == 2).all()


def test_flags_the_recipe_chooses_are_refused(recipe_run, tmp_path):
    data_dir, _ = recipe_run
    with pytest.raises(InputError, match="--recipe arena chooses --epochs itself"):
        main.main(["--recipe", "arena", "--data_dir", str(data_dir), "--dataset", "ar", "--epochs", "3",
                   "--save_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_split_without_questions_is_refused(tmp_path):
    root = tmp_path
    train_json, _ = synthetic.generate(str(root / "raw"), playlists=200, songs=300, seed=5)
    split.split(train_json, str(root / "data"), "plain", min_item_count=5, num_test_neg=20, verbose=False)
    shutil.rmtree(root / "raw")
    with pytest.raises(InputError, match="no Arena questions"):
        main.main(["--recipe", "arena", "--data_dir", str(root / "data"), "--dataset", "plain",
                   "--save_dir", str(root / "run")])


def test_a_method_recorded_before_ials_and_the_song_parts_still_answers(recipe_run, tmp_path, monkeypatch, capsys):
    """Its "songs" weights serve every playlist with known songs; --method ials takes iALS's default settings."""
    data_dir, run = recipe_run
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    method = checkpoint["continuation"]
    del method["ials"], method["songs"]["ials"], method["few_songs"], method["many_songs"]
    torch.save(checkpoint, tmp_path / "old.pt")
    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", tmp_path / "old.pt", "--continue",
                                data_dir / "ar.questions.json", "--out", tmp_path / "old.json")
    assert code == 0 and "ials" not in out.splitlines()[0]
    old = blend.named_method(method, "blend")
    assert old["few_songs"] == old["many_songs"] == method["songs"]
    code, out, _ = run_evaluate(monkeypatch, capsys, "--checkpoint", tmp_path / "old.pt", "--continue",
                                data_dir / "ar.questions.json", "--out", tmp_path / "ials.json", "--method", "ials")
    assert code == 0 and out.startswith("method: ials") and len(load(tmp_path / "ials.json")) == len(load(
        data_dir / "ar.questions.json"))


def test_a_song_part_no_validation_question_falls_in_keeps_its_starting_weights(recipe_run, monkeypatch):
    data_dir, _ = recipe_run
    data = dataloader.load(str(data_dir), "ar")
    validation = recipe.carve(data, *continuation.split_tags(data, str(data_dir)))
    monkeypatch.setattr(recipe, "WEIGHTS", (0.0, 2.0))
    monkeypatch.setattr(blend, "MANY_SONGS", 10_000)  # no playlist has more known songs than that
    start = {**recipe.START, **{part: {scorer: weight for scorer, weight in recipe.START[part].items()
                                       if scorer != "model"} for part in blend.SONG_PARTS}}  # no model to train
    found = recipe.Judge(validation).search(start, None, lambda line: None)
    assert found["many_songs"] == start["many_songs"]
    assert found["songs"] != start["songs"] and set(found["songs"].values()) <= {0.0, 2.0}
