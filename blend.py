"""Playlist continuation by a method chosen on validation questions (main.py --recipe arena): a playlist's song
scores are a weighted sum of the model's, item-kNN's, playlist-kNN's, iALS's and those of the songs its tags and title
words co-occur with (P(song | feature)), each standardised over the songs; its tags likewise from its title words and
tags (P(tag | feature)), its songs (P(tag | song)) and its playlist-kNN neighbours' tags. A playlist with no known
song finds its neighbours by its tags and title words instead. The weights (one set for playlists with 1-3 known
songs, 4-10, more, none; one for tags with and without a title), the neighbour settings and the fold-in are a method
(a dict, stored in the checkpoint and results.json); METHODS names the others it allows: the model alone, each
neighbour method and iALS alone (no model), most popular.
"""
import time

import numpy as np
import torch

import baselines
import continuation
from arena import ARENA_SONGS, ARENA_TAGS
from continuation import CHUNK_ROWS, standardised
from dataloader import csr_rows, row_ids
from utils import InputError, Progress

SONG_SCORERS = ("model", "itemknn", "playlistknn", "ials", "features")
TAG_SCORERS = ("title", "songs", "neighbours")
METHODS = ("blend", "model", "neighbours", "itemknn", "playlistknn", "ials", "pop")
FEW_SONGS, MANY_SONGS = 3, 10  # known songs: up to FEW_SONGS a playlist's songs are "few_songs", over MANY_SONGS "many"
KNOWN_SONGS_PARTS = ("songs", "few_songs", "many_songs")  # a method's weights for songs: of playlists with
# FEW_SONGS to MANY_SONGS known songs, fewer, more
SONG_PARTS = KNOWN_SONGS_PARTS + ("no_songs",)  # and of those with none
PARTS = SONG_PARTS + ("tags", "tags_no_title")  # and for tags: of playlists with a title, of those without
TIE_BREAK = 1e-3  # weight of standardised popularity, so that rows no scorer tells apart still rank
UNVALIDATED = {  # a method's settings where no run validated one (the recipe starts its search from them)
    "name": "blend", **{part: {"model": 1.0, "itemknn": 1.0, "playlistknn": 1.0, "ials": 1.0, "features": 0.25}
                        for part in KNOWN_SONGS_PARTS},
    "no_songs": {"playlistknn": 1.0, "features": 1.0}, "tags": {"title": 1.0, "songs": 0.0, "neighbours": 0.5},
    "tags_no_title": {"title": 1.0, "songs": 0.0, "neighbours": 1.0},
    "itemknn": {"neighbours": 100, "shrink": 10.0, "alpha": 0.5, "power": 1.0},
    "playlistknn": {"neighbours": 300, "alpha": 0.5, "power": 1.0, "idf": 0.5},
    "ials": {"dim": 64, "l2": 0.007, "unobserved": 0.3, "epochs": 16},
    "fold_in": {"steps": continuation.FOLD_IN["steps"], "lr": continuation.FOLD_IN["lr"]}}


def named_method(method, name):
    """The method `name` (one of METHODS) derived from a validated `method` (its neighbour and fold-in settings):
    "blend" is `method` itself; "model" its model scores alone (the features for a playlist without known songs,
    tags from its title words and tags: no neighbour scores); "neighbours" the blend without the model; "itemknn",
    "playlistknn" and "ials" that method alone; "pop" the most popular songs and tags for every playlist. Settings
    `method` lacks (one recorded before a scorer or part existed) are UNVALIDATED's, and its "songs" weights serve
    playlists with few and with many known songs alike."""
    if name not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)} (got {name!r})")
    method = {**{key: value for key, value in UNVALIDATED.items() if key not in ("name", *PARTS)},
              **{part: method["songs"] for part in KNOWN_SONGS_PARTS}, **method}
    alone = {"model": ({"model": 1.0}, {"features": 1.0}, {"title": 1.0}),
             "itemknn": ({"itemknn": 1.0}, {"features": 1.0}, {"title": 1.0}),
             "playlistknn": ({"playlistknn": 1.0}, {"playlistknn": 1.0}, {"neighbours": 1.0}),
             "ials": ({"ials": 1.0}, {"features": 1.0}, {"title": 1.0}),
             "pop": ({}, {}, {})}
    if name == "blend":
        return {**method, "name": "blend"}
    if name == "neighbours":
        return {**method, "name": name, **{part: {**method[part], "model": 0.0} for part in KNOWN_SONGS_PARTS}}
    songs, no_songs, tags = alone[name]
    return {**method, "name": name, **{part: songs for part in KNOWN_SONGS_PARTS}, "no_songs": no_songs, "tags": tags,
            "tags_no_title": tags}


def settings_key(settings):
    """A neighbour method's settings (a dict) as a key of Scorers' `fitted`."""
    return tuple(sorted(settings.items()))


def needs(method, scorer):
    """Whether `method` gives `scorer` a weight anywhere."""
    return any(method[part].get(scorer) for part in PARTS)


class Scorers:
    """The scorers a method needs, fitted on one split (`data`, its `vocabulary`) or taken from `fitted` (a dict
    that keeps them for later Scorers of the same split), and the trained `model` (or None where the method does
    not use it)."""

    def __init__(self, data, vocabulary, method, model=None, fold_in_all=False, timings=None, fitted=None,
                 show_progress=False):
        self.data, self.vocabulary, self.method = data, vocabulary, method
        self.show_progress = show_progress
        self.base = continuation.Continuation(data, vocabulary, None)
        fitted = {} if fitted is None else fitted  # {(name, settings): fitted baseline}, kept between calls

        def fit(name, fitter):
            key = (name, settings_key(method[name if name != "features" else "playlistknn"]))
            if key not in fitted:
                fitted[key] = fitter()
            return fitted[key]

        self.itemknn = fit("itemknn", lambda: baselines.fit("itemknn", data, **method["itemknn"])) \
            if needs(method, "itemknn") else None
        self.ials = fit("ials", lambda: baselines.fit("ials", data, **method["ials"])) \
            if needs(method, "ials") else None
        self.by_songs = self.by_features = None
        if needs(method, "playlistknn") or needs(method, "neighbours"):
            self.by_songs = fit("playlistknn", lambda: baselines.fit("playlistknn", data, **method["playlistknn"]))
            self.by_features = fit("features", lambda: baselines.PlaylistKNN(
                *vocabulary.user_features, vocabulary.num_features, neighbours=method["playlistknn"]["neighbours"]))
        self.model_source = None
        if needs(method, "model"):
            if model is None:
                raise InputError(f"method {method['name']!r} needs a trained model (--checkpoint)")
            self.model_source = continuation.model_songs(model, data.num_items, fold_in_all, timings,
                                                         method["fold_in"])
        self.song_popularity = standardised(vocabulary.song_popularity[None])
        self.tag_popularity = standardised(vocabulary.tag_popularity[None])

    def prepare(self, playlists, progress=None, every=False):
        """A Prepared of `playlists`: their known songs, users, neighbours and the model's scorer (`every`: it
        computes every scorer's scores, weighed or not, for a weight search)."""
        return Prepared(self, playlists, progress, every)

    def known_songs(self, playlists):
        return self.base.known_songs(playlists)

    def answer(self, playlists, k_songs=ARENA_SONGS, k_tags=ARENA_TAGS, timings=None):
        """As continuation.Continuation.answer (its contract: results, top song indices and scores, unknown songs),
        by self.method, CHUNK_ROWS playlists at a time; with `show_progress`, progress lines on the way."""
        timings = {} if timings is None else timings
        started = time.perf_counter()
        prepared = self.prepare(playlists, self.progress("neighbours", len(playlists)))
        timings["prepare_seconds"] = time.perf_counter() - started
        answered = self.progress("answered", len(playlists))
        songs, scores, tags = [], [], []
        for begin in range(0, len(playlists), CHUNK_ROWS):
            rows = torch.arange(begin, min(begin + CHUNK_ROWS, len(playlists)))
            best, best_scores = top_songs(prepared, rows, self.method, k=k_songs)
            songs.append(best)
            scores.append(best_scores)
            tags.append(top_tags(prepared, rows, self.method, k=k_tags))
            if answered:
                answered(int(rows[-1]) + 1)
        songs, scores, tags = torch.cat(songs), torch.cat(scores), torch.cat(tags)
        timings["answer_seconds"] = time.perf_counter() - started
        return self.as_results(playlists, songs, tags), songs, scores, prepared.unknown

    def progress(self, what, playlists):
        """A utils.Progress of `what` over that many playlists, or None without show_progress."""
        return Progress(what, playlists, "playlist") if self.show_progress else None

    def as_results(self, playlists, top_songs, top_tags):
        """results.json entries of `playlists` from top song and tag indices."""
        song_ids = np.asarray(self.base.song_index)[top_songs.numpy()].tolist()
        tag_names = np.asarray(self.vocabulary.tags, dtype=object)[top_tags.numpy()].tolist()
        return [{"id": p["id"], "songs": s, "tags": t} for p, s, t in zip(playlists, song_ids, tag_names)]


class Prepared:
    """What every chunk of some playlists needs, computed once for all of them: known songs (CSR), own tags, users,
    playlist-kNN neighbours (by songs, or by features without a known song) and the model's scores for them."""

    def __init__(self, scorers, playlists, progress=None, every=False):
        self.scorers, self.playlists, self.every = scorers, playlists, every
        self.indptr, self.songs, self.unknown = scorers.base.known_songs(playlists)
        self.users = torch.tensor(scorers.base.user_index.get_indexer([p["id"] for p in playlists]),
                                  dtype=torch.int64)
        known = self.indptr.diff()
        self.has_songs = known > 0
        self.song_part = torch.where(known == 0, 3, torch.where(known <= FEW_SONGS, 1, torch.where(
            known > MANY_SONGS, 2, 0)))  # each playlist's index in SONG_PARTS
        self.has_title = torch.tensor([bool(continuation.title_words(p["plylst_title"])) for p in playlists],
                                      dtype=torch.bool)
        self.features = scorers.vocabulary.features([p["tags"] for p in playlists],
                                                    [p["plylst_title"] for p in playlists])
        self.neighbours = self.nearest(progress) if scorers.by_songs is not None else None
        self.model_scores = None
        if scorers.model_source is not None:
            rows = self.has_songs.nonzero().squeeze(1)
            self.model_rows = torch.full((len(playlists),), -1, dtype=torch.int64)
            self.model_rows[rows] = torch.arange(len(rows))
            self.model_scores = scorers.model_source(self.users[rows], *csr_rows(self.indptr, self.songs, rows))

    def nearest(self, progress=None):
        """(users [rows, k], weights [rows, k]): each playlist's neighbours by its songs, or by its features;
        progress(playlists done) as they are found."""
        s = self.scorers
        with_songs = self.has_songs.nonzero().squeeze(1)
        without = (~self.has_songs).nonzero().squeeze(1)
        k = s.by_songs.neighbours
        users = torch.zeros(len(self.playlists), k, dtype=torch.int64)
        weights = torch.zeros(len(self.playlists), k)
        done = 0
        for rows, knn, (indptr, keys) in ((with_songs, s.by_songs, (self.indptr, self.songs)),
                                          (without, s.by_features, self.features)):
            if len(rows):
                step = None if progress is None else lambda rows_done, before=done: progress(before + rows_done)
                found = knn.nearest(*csr_rows(indptr, keys, rows), exclude=self.users[rows], progress=step)
                users[rows, :found[0].shape[1]], weights[rows, :found[1].shape[1]] = found
            done += len(rows)
        return users, weights

    def used(self, scorer):
        """Whether the scores of `scorer` are computed: every scorer's for a weight search (`every`), else those
        the method weighs."""
        return self.every or needs(self.scorers.method, scorer)

    def song_scores(self, rows):
        """{scorer: standardised scores [rows, songs]} of the playlists `rows` for every song scorer used."""
        s, out = self.scorers, {}
        indptr, songs = csr_rows(self.indptr, self.songs, rows)
        if s.itemknn is not None and self.used("itemknn"):
            out["itemknn"] = standardised(s.itemknn.history_scores(indptr, songs))
        if s.ials is not None and self.used("ials"):
            out["ials"] = standardised(s.ials.history_scores(indptr, songs))
        if self.neighbours is not None and self.used("playlistknn"):
            out["playlistknn"] = standardised(baselines.neighbour_sums(
                self.neighbours[0][rows], self.neighbours[1][rows], s.by_songs.user_indptr, s.by_songs.user_items,
                s.data.num_items))
        if self.model_scores is not None:
            scored = self.has_songs[rows]
            model = torch.zeros(len(rows), s.data.num_items)
            if scored.any():
                model[scored] = standardised(self.model_scores(self.model_rows[rows[scored]]))
            out["model"] = model
        if self.used("features"):
            out["features"] = standardised(s.base.feature_songs([self.playlists[r] for r in rows.tolist()]))
        return out

    def tag_scores(self, rows):
        """{scorer: standardised scores [rows, tags]} of the playlists `rows` for every tag scorer used."""
        v, out = self.scorers.vocabulary, {}
        if self.used("title"):
            out["title"] = standardised(continuation.spread(*csr_rows(*self.features, rows), v.tag_given_feature,
                                                            len(v.tags)))
        if self.used("songs"):
            out["songs"] = standardised(continuation.spread(*csr_rows(self.indptr, self.songs, rows),
                                                            v.tag_given_song, len(v.tags)))
        if self.neighbours is not None and self.used("neighbours"):
            out["neighbours"] = standardised(baselines.neighbour_sums(
                self.neighbours[0][rows], self.neighbours[1][rows], *v.user_tags, len(v.tags)))
        return out

    def own(self, rows):
        """(song mask [rows, songs], tag mask [rows, tags]): what each playlist already holds."""
        indptr, songs = csr_rows(self.indptr, self.songs, rows)
        song_mask = torch.zeros(len(rows), self.scorers.data.num_items, dtype=torch.bool)
        song_mask[row_ids(indptr), songs] = True
        tag_indptr, tags = self.scorers.vocabulary.tag_csr([self.playlists[r]["tags"] for r in rows.tolist()])
        tag_mask = torch.zeros(len(rows), len(self.scorers.vocabulary.tags), dtype=torch.bool)
        tag_mask[row_ids(tag_indptr), tags] = True
        return song_mask, tag_mask


def blended(scores, weights, popularity, rows):
    """Sum of weight x scores over the scorers `weights` names (standardised scores [rows, width]), plus the
    tie-break."""
    total = TIE_BREAK * popularity.expand(rows, -1).clone()
    for name, weight in weights.items():
        if weight:
            total += weight * scores[name]
    return total


def top_songs(prepared, rows, method, song_scores=None, k=ARENA_SONGS):
    """(top songs [rows, k], their scores) of the playlists `rows` by `method`, never one a playlist holds;
    `song_scores`: the scorers' scores of these rows when already computed."""
    s = prepared.scorers
    song_scores = prepared.song_scores(rows) if song_scores is None else song_scores
    parts = prepared.song_part[rows]
    songs = torch.empty(len(rows), s.data.num_items)
    for index, part in enumerate(SONG_PARTS):
        inside = (parts == index).nonzero().squeeze(1)
        if len(inside) == len(rows):
            songs = blended(song_scores, method[part], s.song_popularity, len(rows))
        elif len(inside):
            songs[inside] = blended({name: scores[inside] for name, scores in song_scores.items()}, method[part],
                                    s.song_popularity, len(inside))
    top = songs.masked_fill_(prepared.own(rows)[0], float("-inf")).topk(k, dim=1)
    return top.indices, top.values


def top_tags(prepared, rows, method, tag_scores=None, k=ARENA_TAGS):
    """The top tags [rows, k] of the playlists `rows` by `method`, never one a playlist holds."""
    s = prepared.scorers
    tag_scores = prepared.tag_scores(rows) if tag_scores is None else tag_scores
    tags = torch.where(prepared.has_title[rows][:, None],
                       blended(tag_scores, method["tags"], s.tag_popularity, len(rows)),
                       blended(tag_scores, method["tags_no_title"], s.tag_popularity, len(rows)))
    return tags.masked_fill_(prepared.own(rows)[1], float("-inf")).topk(k, dim=1).indices

