"""main.py --recipe arena: the playlist continuation recipe. Validation questions are carved out of the training
playlists (the Arena's four kinds in its proportions, by arena.py's arena_questions: half a playlist's songs and
tags hidden, or all of one field), and every setting is chosen on them, never on the questions being scored or
their answers: the model (size, negatives, epochs: each candidate of MODELS trained on the training pairs less the
hidden halves, scored alone on the validation questions every EVAL_EVERY epochs), the settings of item-kNN,
playlist-kNN and iALS (ITEMKNN_GRID, PLAYLISTKNN_GRID, IALS_GRID: each alone), the fold-in steps (FOLD_IN_STEPS), and
the weights of the blend of model, item-kNN, playlist-kNN, iALS and tag/title songs, and of the tag scorers (WEIGHTS,
by coordinate ascent). The chosen model answers the split's questions with the chosen method (blend.py), its other
scorers fitted on all training pairs; best.pt and results.json record the method, and the Arena score when the split
has answers.
"""
import argparse
import dataclasses
import json
import os
import time

import numpy as np
import pandas as pd
import torch

import blend
import continuation
import dataloader
from arena import ARENA_SONGS, ARENA_TAGS, PLAYLIST_FIELDS, arena_line, arena_questions, arena_score, list_ndcg
from distributed import Context
from model import ModelConfig, build_model
from runs import compact, results_dir, run_provenance, save_checkpoint
from training import Position, epoch_size, make_step, train_epoch, uses_sparse_updates
from utils import MISSING, InputError, atomic_open

VALIDATION_SHARE = 0.2  # of the training playlists, as the Arena's split asks 20% of the playlists
MAX_VALIDATION = 2000  # validation questions at most (the search holds their scores of every song in memory)
MODELS = ({"model": "mf", "latent_dim_mf": 64, "num_neg": 4, "lr": 0.002},
          {"model": "mf", "latent_dim_mf": 128, "num_neg": 4, "lr": 0.002})
EPOCHS = 20
CHOSEN_FLAGS = ("model", "latent_dim_mf", "num_layers", "num_neg", "lr", "epochs", "patience", "eval", "resume",
                "pretrain", "pretrain_gmf", "pretrain_mlp", "gpu")  # main.py's flags the recipe sets, or has no use for
EVAL_EVERY = 2  # epochs between validation scores; training stops after two without a better one
ITEMKNN_GRID = ({"neighbours": 100, "shrink": 10.0, "alpha": 0.5, "power": 1.0},  # alpha 0.5: the cosine
                {"neighbours": 300, "shrink": 10.0, "alpha": 0.5, "power": 1.0},
                {"neighbours": 300, "shrink": 10.0, "alpha": 0.75, "power": 1.0},
                {"neighbours": 300, "shrink": 10.0, "alpha": 1.0, "power": 1.0})
PLAYLISTKNN_GRID = ({"neighbours": 100, "alpha": 0.5, "power": 1.0, "idf": 0.0},
                    {"neighbours": 300, "alpha": 0.5, "power": 1.0, "idf": 0.0},
                    {"neighbours": 300, "alpha": 0.5, "power": 1.0, "idf": 0.5},
                    {"neighbours": 300, "alpha": 0.7, "power": 2.0, "idf": 0.5},
                    {"neighbours": 1000, "alpha": 0.5, "power": 1.0, "idf": 0.5})
IALS_GRID = ({"dim": 64, "l2": 0.003, "unobserved": 300.0, "epochs": 16},  # unobserved: over the number of songs
             {"dim": 64, "l2": 0.007, "unobserved": 1000.0, "epochs": 16})
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
FOLD_IN_STEPS = (20, 50, 100)
START = blend.UNVALIDATED


@dataclasses.dataclass
class Validation:
    data: dataloader.Data  # the split with each validation playlist's training songs cut to its question's
    vocabulary: continuation.Vocabulary  # its tags cut likewise
    questions: list
    answers: list


def carve(data, user_tags, titles, seed=0):
    """A Validation: VALIDATION_SHARE of the training playlists with at least two songs and a tag (at most
    MAX_VALIDATION), made questions as the Arena makes them, seeded."""
    rng = np.random.default_rng(seed)
    trained = np.unique(data.test.users.cpu().numpy())
    indptr, items = data.seen_indptr.cpu().numpy(), data.seen_items.cpu().numpy()
    eligible = trained[(np.diff(indptr)[trained] >= 2) & np.array([len(user_tags[u]) > 0 for u in trained], bool)]
    count = min(int(len(trained) * VALIDATION_SHARE), MAX_VALIDATION, len(eligible))
    if count < 10:
        raise InputError(f"split {data.name!r}: too few training playlists with songs and tags to carve validation "
                         f"questions from ({len(eligible)})")
    user_ids, item_ids = np.asarray(data.meta["user_ids"]), np.asarray(data.meta["item_ids"])
    asked = [tuple({"id": int(user_ids[u]), "songs": item_ids[items[indptr[u]:indptr[u + 1]]].tolist(),
                    "tags": list(user_tags[u]), "plylst_title": titles[u]}.get(key, MISSING)
                   for key in PLAYLIST_FIELDS) for u in np.sort(rng.choice(eligible, count, replace=False))]
    questions, answers, _ = arena_questions(asked, rng)
    users = pd.Index(user_ids).get_indexer([q["id"] for q in questions])
    kept_tags = list(user_tags)
    for user, question in zip(users, questions):
        kept_tags[user] = question.get("tags", [])
    reduced = cut_to_questions(data, users, [pd.Index(item_ids).get_indexer(q["songs"]) for q in questions])
    return Validation(reduced, continuation.Vocabulary(reduced, None, kept_tags, titles),
                      [{"id": q["id"], "songs": q["songs"], "tags": q.get("tags", []),
                        "plylst_title": q.get("plylst_title", "")} for q in questions], answers)


def cut_to_questions(data, users, songs):
    """`data` with the training songs of `users` replaced by `songs` (a list of index arrays, one a user), its
    seen songs and training negatives' forbidden pairs made anew (dataloader.load's rule)."""
    train_users, train_items = data.train_users.cpu().numpy(), data.train_items.cpu().numpy()
    cut = np.zeros(data.num_users, bool)
    cut[users] = True
    keep = ~cut[train_users]
    new_users = np.concatenate([train_users[keep], np.repeat(users, [len(s) for s in songs])])
    new_items = np.concatenate([train_items[keep]] + list(songs))
    order = np.argsort(new_users, kind="stable")
    new_users, new_items = new_users[order], new_items[order]
    seen_indptr, seen_items = dataloader.csr_by_user(new_users, new_items, data.num_users)
    test_users, test_items = data.test.users.cpu().numpy(), data.test.items.cpu().numpy()
    forbidden = dataloader.forbidden_keys(np.concatenate([new_users, np.repeat(test_users, test_items.shape[1])]),
                                          np.concatenate([new_items, test_items.ravel()]), data.num_items)
    forbidden = dataloader.forbidden_tensor(forbidden, data.num_users, data.num_items)
    return dataclasses.replace(data, train_users=torch.from_numpy(new_users), train_items=torch.from_numpy(new_items),
                               seen_indptr=torch.from_numpy(seen_indptr), seen_items=torch.from_numpy(seen_items),
                               forbidden=forbidden, val=None)


class Judge:
    """Scores methods on the validation questions: the Arena score of their answers (arena_score), and for the
    weight search, every scorer's standardised scores of every question computed once."""

    def __init__(self, validation):
        self.validation, self.fitted = validation, {}

    def score(self, method, model=None, fold_in_all=False):
        scorers = blend.Scorers(self.validation.data, self.validation.vocabulary, method, model, fold_in_all,
                                fitted=self.fitted)
        results, _ = continuation.answer_questions(scorers, self.validation.questions)
        return arena_score(results, self.validation.answers, "validation results")

    def settings(self, method, name, grid):
        """(the best settings of the neighbour method `name` in `grid` by its validation score alone, each one's
        score); the others' fitted scorers are let go."""
        scored = [(self.score(blend.named_method({**method, name: settings}, name))[2], settings) for settings in grid]
        best = max(scored, key=lambda t: t[0])[1]
        fitted_by = (name, "features") if name == "playlistknn" else (name,)  # features: playlist-kNN's settings
        for key in [key for key in self.fitted if key[0] in fitted_by and key[1] != blend.settings_key(best)]:
            del self.fitted[key]
        return best, [{**settings, "validation_score": score} for score, settings in scored]

    def search(self, method, model, say):
        """`method` with the weights of its scorers chosen by coordinate ascent over WEIGHTS (two passes), each part
        (blend.PARTS) on its own nDCG: songs over the questions of that part (by their known songs); tags over the
        questions with a title, and over all of them with their titles removed."""
        scorers = blend.Scorers(self.validation.data, self.validation.vocabulary, method, model, fitted=self.fitted)
        questions = self.validation.questions
        prepared = scorers.prepare(questions, every=True)
        untitled = scorers.prepare([{**q, "plylst_title": ""} for q in questions], every=True)
        rows = {part: (prepared.song_part == index).nonzero().squeeze(1) for index, part in enumerate(blend.SONG_PARTS)}
        rows["tags"], rows["tags_no_title"] = prepared.has_title.nonzero().squeeze(1), torch.arange(len(questions))
        parts = [part for part in blend.PARTS if len(rows[part])]  # a part no question falls in keeps its weights
        scores = {part: prepared.song_scores(rows[part]) for part in blend.SONG_PARTS if part in parts}
        scores["tags"] = prepared.tag_scores(rows["tags"])
        scores["tags_no_title"] = untitled.tag_scores(rows["tags_no_title"])

        def value(part, trial):
            if part in blend.SONG_PARTS:
                top, _ = blend.top_songs(prepared, rows[part], trial, scores[part])
                return self.ndcg(scorers, top, "songs", rows[part])
            which = prepared if part == "tags" else untitled
            return self.ndcg(scorers, blend.top_tags(which, rows[part], trial, scores[part]), "tags", rows[part])

        method = {**method, **{part: dict(method[part]) for part in blend.PARTS}}
        for _ in range(2):
            for part in parts:
                for scorer in method[part]:
                    method[part][scorer] = max(WEIGHTS, key=lambda weight: value(
                        part, {**method, part: {**method[part], scorer: weight}}))
            say("  weights: " + "; ".join(f"{part} {method[part]}" for part in blend.PARTS))
        return method

    def ndcg(self, scorers, top, field, rows):
        """Mean nDCG of the top lists [len(rows), k] of the questions `rows` (at least one) against their answers'
        `field`."""
        names = np.asarray(scorers.base.song_index if field == "songs" else scorers.vocabulary.tags, dtype=object)
        recommended = names[top.numpy()].tolist()
        truths = [self.validation.answers[row][field] for row in rows.tolist()]
        return float(list_ndcg(recommended, truths, ARENA_SONGS if field == "songs" else ARENA_TAGS).mean())


class Training:
    """A candidate model (args' flags, the candidate's over them) trained on the validation split EVAL_EVERY epochs
    a round, scored alone on the validation questions after each; `best`: (score, epoch, state dict) of its best
    round so far."""

    def __init__(self, candidate, validation, args, say):
        self.candidate, self.validation, self.say = candidate, validation, say
        self.args = argparse.Namespace(**{**vars(args), **candidate})
        self.ctx = Context(0, 1, torch.device("cpu"))
        torch.manual_seed(args.seed)
        sparse = uses_sparse_updates(self.args, self.ctx.device, lambda line: None)
        self.model = build_model(ModelConfig.of(self.args), validation.data.num_users, validation.data.num_items,
                                 sparse)
        self.step = make_step(self.model, self.args, sparse, self.ctx)
        self.position, self.best, self.epoch = Position.from_checkpoint(None), None, 0

    def round(self, judge):
        """Train EVAL_EVERY more epochs (fewer at EPOCHS), then score; whether the score improved on the best."""
        started = time.perf_counter()
        for _ in range(min(EVAL_EVERY, EPOCHS - self.epoch)):
            train_epoch(self.step, self.validation.data, self.args, self.ctx, self.position)
            loss = self.position.end_epoch(epoch_size(self.validation.data, self.args))
            self.epoch += 1
        _, _, score = judge.score(blend.named_method(START, "model"), self.model.eval())
        self.model.train()
        self.say(f"  {describe(self.candidate)} epoch {self.epoch}: loss {loss:.4f}, validation score {score:.4f} "
                 f"({time.perf_counter() - started:.1f}s)")
        improved = self.best is None or score > self.best[0]
        if improved:
            self.best = (score, self.epoch, compact(self.model.state_dict()))
        return improved

    def done(self):
        """Whether training ends: EPOCHS reached, or two rounds without a better score."""
        return self.epoch >= EPOCHS or self.epoch - self.best[1] >= 2 * EVAL_EVERY


def train_models(validation, judge, args, say):
    """(best Training, [(candidate, its first round's score)]): every candidate of MODELS trained one round, the
    best of them on until done."""
    trainings = [Training(candidate, validation, args, say) for candidate in MODELS]
    for training in trainings:
        training.round(judge)
    first = [(t.candidate, t.best[0]) for t in trainings]
    best = max(trainings, key=lambda t: t.best[0])
    del trainings
    while not best.done():
        best.round(judge)
    return best, first


def describe(candidate):
    return ", ".join(f"{key} {value}" for key, value in candidate.items())


def choose(validation, args, say):
    """(method, model config, model state dict, choice record): every setting, on the validation questions."""
    judge, record = Judge(validation), {}
    training, first = train_models(validation, judge, args, say)
    score, epoch, state = training.best
    record["models"] = [{**c, "first_round_score": s} for c, s in first]
    record["model"] = {**training.candidate, "epochs": epoch, "validation_score": score}
    say(f"model: {describe(training.candidate)}, {epoch} epochs (validation score {score:.4f})")
    config = {**vars(args), **training.candidate, "epochs": epoch}
    model = build_model(ModelConfig.of(config), validation.data.num_users, validation.data.num_items)
    model.load_state_dict(state)
    model.eval()
    method = dict(START)
    ials_grid = [{**settings, "unobserved": round(settings["unobserved"] / validation.data.num_items, 6)}
                 for settings in IALS_GRID]
    for name, grid in (("itemknn", ITEMKNN_GRID), ("playlistknn", PLAYLISTKNN_GRID), ("ials", ials_grid)):
        method[name], record[name] = judge.settings(method, name, grid)
        say(f"{name}: {method[name]}")
    folds = [(judge.score({**blend.named_method(method, "model"), "fold_in": {**method["fold_in"], "steps": s}},
                          model, fold_in_all=True)[2], s) for s in FOLD_IN_STEPS]
    record["fold_in"] = [{"steps": s, "validation_score": v} for v, s in folds]
    method["fold_in"] = {**method["fold_in"], "steps": max(folds)[1]}
    say(f"fold-in: {method['fold_in']['steps']} steps (validation score {max(folds)[0]:.4f} folded in, "
        f"{score:.4f} trained)")
    method = judge.search(method, model, say)
    record["methods"] = {name: dict(zip(("song", "tag", "score"), judge.score(blend.named_method(method, name), model)))
                         for name in ("blend", "model", "neighbours", "itemknn", "playlistknn", "ials")}
    say("validation: " + ", ".join(f"{name} {r['score']:.4f}" for name, r in record["methods"].items()))
    return method, config, state, record


def split_questions(data):
    """(question files, answers file or None) of a split with Arena questions (split.py --arena or --questions)."""
    if data.meta.get("arena"):
        return [data.meta["arena"]["questions"]], data.meta["arena"]["answers"]
    if data.meta.get("questions"):
        return data.meta["questions"], None
    raise InputError(f"--recipe arena: split {data.name!r} has no Arena questions (split.py --arena or --questions)")


def continue_split(model, data, data_dir, method, save_dir, say):
    """Answer the split's questions with `method` (neighbour scorers fitted on all of `data`'s training pairs):
    SAVE_DIR/submission.json (submission-NAME.json for each of several question files); returns {"answer_seconds",
    and "song", "tag", "score" where the split has answers}."""
    paths, answers_path = split_questions(data)
    started = time.perf_counter()
    scorers = blend.Scorers(data, continuation.Vocabulary(data, data_dir), method, model, show_progress=True)
    record = {}
    for path in paths:
        name = "submission" + ("" if len(paths) == 1 else "-" + os.path.splitext(os.path.basename(path))[0])
        out = os.path.join(save_dir, f"{name}.json")
        done = continuation.answer_file(scorers, path, out, answers_path)
        say(f"wrote {out}: {len(done['results']):,} playlists by method {method['name']} in {done['seconds']:.1f}s"
            + (f" ({done['unknown']:,} of their songs unknown to the split: skipped)" if done["unknown"] else ""))
        if done["score"] is not None:
            record.update(zip(("song", "tag", "score"), done["score"]))
            say(f"Arena score on {path}: " + arena_line(*done["score"]))
    record["answer_seconds"] = time.perf_counter() - started
    return record


def run(args, given=()):
    """main.py --recipe arena: choose on carved validation questions, save best.pt (the model, its config and the
    method), answer the split's questions, write results.json. `given`: the flags on the command line, none of
    which may be one the recipe chooses or cannot honour (CHOSEN_FLAGS)."""
    chosen = [flag for flag in CHOSEN_FLAGS if flag in given]
    if chosen:
        raise InputError(f"--recipe arena chooses --{chosen[0]} itself (or does not use it): leave it out")
    torch.set_num_threads(args.threads)
    args.dataset = args.dataset or dataloader.default_dataset(args.data_dir)
    data = dataloader.load(args.data_dir, args.dataset)
    split_questions(data)
    save_dir = results_dir(args.save_dir, os.path.join("runs", args.dataset, "recipe-arena"))
    provenance = run_provenance(args, data.device)
    say = lambda line: print(line, flush=True)  # noqa: E731
    started = time.perf_counter()
    validation = carve(data, *continuation.split_tags(data, args.data_dir), args.seed)
    say(f"validation: {len(validation.questions):,} questions carved from the training playlists of {args.dataset}")
    method, config, state, choices = choose(validation, args, say)
    train_seconds = time.perf_counter() - started
    say(f"method: {method['name']}, chosen in {train_seconds:.1f}s")
    model = build_model(ModelConfig.of(config), data.num_users, data.num_items)
    model.load_state_dict(state)
    save_checkpoint(os.path.join(save_dir, "best.pt"), {"config": config, "model": state, "epoch": config["epochs"],
                                                        "continuation": method, "provenance": provenance})
    arena = continue_split(model.eval(), data, args.data_dir, method, save_dir, say)
    results = {"recipe": "arena", "continuation": method, "choices": choices, "train_seconds": train_seconds,
               "arena": arena, "config": config, "provenance": provenance}
    with atomic_open(os.path.join(save_dir, "results.json")) as f:
        json.dump(results, f, indent=1)
    say(f"wrote {os.path.join(save_dir, 'results.json')} and best.pt")
