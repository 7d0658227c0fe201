"""Playlist continuation, the Kakao Arena task: for each question playlist (some of its songs, tags and title), 100
songs and 10 tags not already in it, from a trained model or a non-neural baseline; answer_file runs the task on
files (questions -> results, scored against answers). Used by evaluate.py (--continue, --playlist), main.py (the
Arena score of the best checkpoint) and bench.py.

Songs. A playlist the model was trained on uses its own embeddings; one it has never seen but with songs it knows
is folded in (user vectors fitted to those songs with the item side frozen, all such playlists at once); one with no
known song gets the songs its tags and title words co-occur with in the training playlists, then the most popular;
where a playlist has both, the two are blended (FEATURE_WEIGHT). Tags: by the co-occurrence of the playlist's title
words and tags (the default), visible songs or recommended songs with the training playlists' tags (TAG_METHODS;
measured in RESULTS.md), the most popular tags last.
"""
import copy
import itertools
import os
import re
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dataloader import csr_rows, row_ids
import baselines
from arena import ARENA_SONGS, ARENA_TAGS, arena_score, check_arena_results, read_task, write_results
from model import checked_scorer
from utils import InputError, Progress, plural, read_json

TAG_METHODS = ("popular", "title", "songs", "songs+title", "songs+title+recommended")
TAG_METHOD = "title"
RECOMMENDED_FOR_TAGS = 20  # top recommended songs whose tags count
TABLE_ENTRIES = 1 << 25  # a co-occurrence table larger than this keeps only each row's most probable entries
TOP_TAGS = 50  # the fewest entries a row keeps
FEATURE_WEIGHT = 0.0  # songs of a playlist with known songs: z(song scores) + FEATURE_WEIGHT x z(P(song | features))
FOLD_IN = {"steps": 20, "lr": 0.05, "num_neg": 4, "seed": 0}  # chosen on a second Arena split of the sample (seed 1)
CHUNK_ROWS = 1024  # playlists answered together: [CHUNK_ROWS, songs] float scores
FOLD_IN_CHUNK = 1 << 16  # known songs whose fold-in loss is differentiated at once (their candidates' vectors held)


def title_words(title):
    return re.findall(r"\w+", title.lower())


def coded(index, lists, offset=0):
    """(rows, codes, number not found): the row and position in `index` (a pandas Index, plus `offset`) of every
    value of the lists found there, as numpy arrays, in one look-up."""
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    codes = index.get_indexer(pd.Index(list(itertools.chain.from_iterable(lists)), dtype=index.dtype)) \
        if lengths.sum() else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(lists)), lengths)
    found = codes >= 0
    return rows[found], codes[found] + offset, int((~found).sum())


def csr(rows, codes, num_rows, width):
    """(indptr, values) int64 tensors of the distinct (row, code) pairs, codes in [0, width), sorted in a row."""
    keys = np.unique(rows * width + codes)
    indptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(keys // width, minlength=num_rows), out=indptr[1:])
    return torch.from_numpy(indptr), torch.from_numpy(keys % width)


def conditional(left, right, num_left, width):
    """P(right | left) from co-occurring (left value, right value) pairs (int64 tensors; right values < width):
    a dense [num_left, width] table when it has at most TABLE_ENTRIES entries, else for each left value its most
    probable right values (TABLE_ENTRIES // num_left of them, at least TOP_TAGS), as (right values [num_left, keep],
    probabilities [num_left, keep]) padded with probability 0. Counted with one sort (np.unique)."""
    keys, counts = np.unique(left.numpy() * width + right.numpy(), return_counts=True)
    rows, columns = keys // width, keys % width
    probabilities = counts / np.bincount(rows, counts, minlength=num_left)[rows]
    if num_left * width <= TABLE_ENTRIES:
        table = torch.zeros(num_left, width)
        table[torch.from_numpy(rows), torch.from_numpy(columns)] = torch.from_numpy(probabilities).float()
        return table
    keep = max(TOP_TAGS, TABLE_ENTRIES // num_left)
    order = np.lexsort((-probabilities, rows))  # by row, most probable first
    rows, columns, probabilities = rows[order], columns[order], probabilities[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    kept = rank < keep
    top_columns = torch.zeros(num_left, keep, dtype=torch.int64)
    top_probabilities = torch.zeros(num_left, keep)
    top_columns[rows[kept], rank[kept]] = torch.from_numpy(columns[kept])
    top_probabilities[rows[kept], rank[kept]] = torch.from_numpy(probabilities[kept]).float()
    return top_columns, top_probabilities


def spread(indptr, keys, table, width):
    """Dense [rows, width]: for each CSR row, the mean over its keys of the rows of a `conditional` table, zero for
    an empty row."""
    rows = row_ids(indptr)
    weights = 1.0 / (indptr[1:] - indptr[:-1]).clamp(min=1).float()
    if isinstance(table, torch.Tensor):  # dense: a sparse [rows, keys] matrix of the weights times the table
        means = torch.sparse_coo_tensor(torch.stack([rows, keys]), weights[rows], (len(indptr) - 1, len(table)),
                                        check_invariants=False)
        return torch.sparse.mm(means, table)
    columns, probabilities = table
    out = torch.zeros((len(indptr) - 1) * width)
    out.index_add_(0, (rows[:, None] * width + columns[keys]).reshape(-1),
                   (probabilities[keys] * weights[rows, None]).reshape(-1))
    return out.view(len(indptr) - 1, width)


def split_tags(data, data_dir):
    """(tags, titles) of each user of the split `data`, from DATA_DIR/NAME.tags.json."""
    tags_path = os.path.join(data_dir, f"{data.name}.tags.json")
    playlists = read_json(tags_path, None)
    if not isinstance(playlists, dict) or len(playlists.get("tags", ())) != data.num_users:
        raise InputError(f"{tags_path}: not the tags file of this split (split.py writes it)")
    return playlists["tags"], playlists["titles"]


class Vocabulary:
    """What the training playlists (the split's training pairs and DATA_DIR/NAME.tags.json, or `user_tags` and
    `titles` given for each user) say about tags and title words: the tag and word indices, P(tag | song),
    P(tag | feature) and P(song | feature) for features = tags and title words, song and tag popularity, and each
    user's tags and features (user_tags, user_features: CSR)."""

    def __init__(self, data, data_dir, user_tags=None, titles=None):
        if user_tags is None:
            user_tags, titles = split_tags(data, data_dir)
        self.tags = pd.Index(pd.unique(pd.Series([t for ts in user_tags for t in ts], dtype=object)))
        self.words = pd.Index(pd.unique(pd.Series([w for t in titles for w in title_words(t)], dtype=object)))
        self.num_songs, num_tags = data.num_items, len(self.tags)
        self.num_features = num_tags + len(self.words)
        self.user_tags = tag_indptr, tag_values = self.tag_csr(user_tags)
        self.user_features = feature_indptr, features = self.features(user_tags, titles)
        song_indptr, songs = data.seen_indptr.cpu(), data.seen_items.cpu()
        self.song_popularity = torch.bincount(songs, minlength=self.num_songs).float()
        self.tag_popularity = torch.bincount(tag_values, minlength=num_tags).float()
        self.tag_given_song = conditional(*pair_up(song_indptr, songs, tag_indptr, tag_values), self.num_songs,
                                          num_tags)
        self.tag_given_feature = conditional(*pair_up(feature_indptr, features, tag_indptr, tag_values),
                                             self.num_features, num_tags)
        self.song_given_feature = conditional(*pair_up(feature_indptr, features, song_indptr, songs),
                                              self.num_features, self.num_songs)

    def tag_csr(self, tag_lists):
        """(indptr, tag indices) of the known tags of each list."""
        rows, codes, _ = coded(self.tags, tag_lists)
        return csr(rows, codes, len(tag_lists), len(self.tags))

    def features(self, tag_lists, titles):
        """(indptr, feature indices) of playlists: their known tags, and their known title words (after the tags)."""
        tag_rows, tag_codes, _ = coded(self.tags, tag_lists)
        word_rows, word_codes, _ = coded(self.words, [title_words(title) for title in titles], len(self.tags))
        return csr(np.concatenate([tag_rows, word_rows]), np.concatenate([tag_codes, word_codes]), len(titles),
                   self.num_features)


def pair_up(left_indptr, left, right_indptr, right):
    """(left value, right value) of every pair of values that one row holds in two CSR tables of the same rows."""
    pair_indptr, right_values = csr_rows(right_indptr, right, row_ids(left_indptr))
    return left.repeat_interleave(pair_indptr.diff()), right_values


def standardised(scores):
    """Each row's scores less their mean, over their standard deviation (rows of equal scores: zero)."""
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-12)


def with_user_tables(model, tables):
    """A shallow copy of `model` sharing its item side and layers, whose user tables (user_gmf, user_mlp, user_bias
    as the model has them) are `tables` {name: weight [rows, width]}."""
    folded = copy.copy(model)
    folded._modules = dict(model._modules)
    for name, weight in tables.items():
        table = nn.Embedding(*weight.shape)
        table.weight = weight
        folded._modules[name] = table
    return folded


def fold_in(model, indptr, songs, num_items, steps=FOLD_IN["steps"], lr=FOLD_IN["lr"], num_neg=FOLD_IN["num_neg"],
            seed=FOLD_IN["seed"], losses=None):
    """A model for playlists the model has never seen, row r of the CSR (indptr, songs) being playlist r: its user
    tables are fitted to each playlist's songs against `num_neg` random songs a song (redrawn every step, seeded),
    all playlists at once, by Adam on the model's own loss, from the trained users' mean; the item side and layers
    are frozen (shared with `model`). On the model's device. `losses`: a list each step's loss is appended to."""
    device = next(model.parameters()).device
    indptr, songs = indptr.to(device), songs.to(device)
    names = [name for name, _ in model.named_children() if name.startswith("user_")]
    tables = {name: nn.Parameter(getattr(model, name).weight.detach().mean(0).repeat(len(indptr) - 1, 1))
              for name in names}
    folded = with_user_tables(model, tables)
    rows = row_ids(indptr)
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = torch.zeros(len(songs), 1 + num_neg, device=device)
    labels[:, 0] = 1
    optimizer = torch.optim.Adam(tables.values(), lr=lr)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        score = checked_scorer(folded)
        progress = Progress(f"fold-in of {plural(len(indptr) - 1, 'playlist')}", steps, "step")
        for step in range(steps):
            progress(step)
            negatives = torch.randint(num_items, (len(songs), num_neg), generator=generator, device=device)
            candidates = torch.cat([songs[:, None], negatives], 1)
            optimizer.zero_grad()
            loss = 0.0
            for part in torch.arange(len(songs), device=device).split(FOLD_IN_CHUNK):  # the mean loss's gradient,
                part_loss = F.binary_cross_entropy_with_logits(  # a chunk of songs at a time (bounded memory)
                    score(rows[part], candidates[part]), labels[part], reduction="sum") / labels.numel()
                part_loss.backward()
                loss += part_loss.item()
            optimizer.step()
            if losses is not None:
                losses.append(loss)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    for weight in tables.values():
        weight.requires_grad_(False)
    return folded


class Continuation:
    """Answers question playlists for one split: songs from `song_source` (a function (users [rows], -1 where the
    playlist is not a user; indptr, songs: the playlists' known songs as CSR) -> a function (row indices) -> scores
    [rows, songs]), or (with `fallback`) from the tags and title where a playlist has no known song; tags by
    `tag_method`. Where a playlist has both, its song scores and its tags' and title words' P(song | feature),
    each standardised over the songs, are added with weights 1 and `feature_weight`."""

    def __init__(self, data, vocabulary, song_source, tag_method=TAG_METHOD, fallback=True,
                 feature_weight=FEATURE_WEIGHT):
        if tag_method not in TAG_METHODS:
            raise InputError(f"--tag_method must be one of {', '.join(TAG_METHODS)} (got {tag_method!r})")
        self.data, self.vocabulary, self.song_source = data, vocabulary, song_source
        self.tag_method, self.fallback, self.feature_weight = tag_method, fallback, feature_weight
        self.song_index = pd.Index(data.meta.get("item_ids", range(data.num_items)))
        self.user_index = pd.Index(data.meta.get("user_ids", range(data.num_users)))

    def known_songs(self, playlists):
        """(indptr, song indices, number of songs unknown to the model) of the playlists' songs."""
        rows, codes, unknown = coded(self.song_index, [p["songs"] for p in playlists])
        return (*csr(rows, codes, len(playlists), self.data.num_items), unknown)

    def answer(self, playlists, k_songs=ARENA_SONGS, k_tags=ARENA_TAGS, timings=None):
        """(results [{"id", "songs", "tags"}], song scores' top k_songs item indices [rows, k_songs] and scores
        (fewer columns when the split has fewer songs), the number of the playlists' songs unknown to the model).
        Each playlist's songs and tags exclude its own (its own songs are at score -inf in the top ones), so a
        playlist holding most of the split's songs or tags gets fewer than k."""
        indptr, songs, unknown = self.known_songs(playlists)
        users = torch.tensor(self.user_index.get_indexer([p["id"] for p in playlists]), dtype=torch.int64)
        timings = {} if timings is None else timings
        started = time.perf_counter()
        has_songs = (indptr[1:] > indptr[:-1]) | (not self.fallback)
        rows = has_songs.nonzero().squeeze(1)
        scores_for = self.song_source(users[rows], *csr_rows(indptr, songs, rows)) if len(rows) else None
        position = torch.full((len(playlists),), -1, dtype=torch.int64)
        position[rows] = torch.arange(len(rows))
        timings["prepare_seconds"] = time.perf_counter() - started
        top_songs, top_scores, top_tags, tag_scores = [], [], [], []
        progress = Progress("answering", len(playlists), "playlist")
        for begin in range(0, len(playlists), CHUNK_ROWS):
            progress(begin)
            chunk = slice(begin, begin + CHUNK_ROWS)
            chunk_indptr, chunk_songs = csr_rows(indptr, songs, torch.arange(len(playlists))[chunk])
            started = time.perf_counter()
            best, best_scores = self.top_songs(playlists[chunk], position[chunk], scores_for, chunk_indptr,
                                               chunk_songs, k_songs)
            top_songs.append(best)
            top_scores.append(best_scores)
            timings["songs_seconds"] = timings.get("songs_seconds", 0) + time.perf_counter() - started
            started = time.perf_counter()
            tags, scores = self.top_tags(playlists[chunk], chunk_indptr, chunk_songs, best, k_tags)
            top_tags.append(tags)
            tag_scores.append(scores)
            timings["tags_seconds"] = timings.get("tags_seconds", 0) + time.perf_counter() - started
        top_songs, top_scores = torch.cat(top_songs), torch.cat(top_scores)
        song_ids = listed(np.asarray(self.song_index)[top_songs.numpy()], top_scores)
        tag_names = listed(np.asarray(self.vocabulary.tags, dtype=object)[torch.cat(top_tags).numpy()],
                           torch.cat(tag_scores))
        results = [{"id": p["id"], "songs": s, "tags": t} for p, s, t in zip(playlists, song_ids, tag_names)]
        return results, top_songs, top_scores, unknown

    def top_songs(self, playlists, position, scores_for, indptr, songs, k):
        """The k best songs [rows, k] of each playlist (and their scores), never one of its own: from
        scores_for(position) where position >= 0, else from the fallback."""
        scores = torch.empty(len(playlists), self.data.num_items)
        scored = position >= 0
        if scored.any():
            scores[scored] = scores_for(position[scored])
            if self.feature_weight:
                rows = scored.nonzero().squeeze(1)
                features = self.feature_songs([playlists[r] for r in rows.tolist()])
                scores[rows] = standardised(scores[rows]) + self.feature_weight * standardised(features)
        if (~scored).any():
            rows = (~scored).nonzero().squeeze(1)
            scores[rows] = self.fallback_songs([playlists[r] for r in rows.tolist()])
        scores[row_ids(indptr), songs] = float("-inf")
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return top.indices, top.values

    def fallback_songs(self, playlists):
        """Scores [rows, songs] for playlists with no known song: P(song | feature) averaged over their tags and
        title words, then popularity."""
        popularity = self.vocabulary.song_popularity / self.vocabulary.song_popularity.sum()
        return self.feature_songs(playlists) + 1e-3 * popularity

    def feature_songs(self, playlists):
        """P(song | feature) [rows, songs], averaged over each playlist's tags and title words (zero without)."""
        v = self.vocabulary
        features = v.features([p["tags"] for p in playlists], [p["plylst_title"] for p in playlists])
        return spread(*features, v.song_given_feature, v.num_songs)

    def top_tags(self, playlists, indptr, songs, top_songs, k):
        """The k best tags [rows, k] of each playlist by the tag method and their scores: its own at -inf."""
        v, method = self.vocabulary, self.tag_method
        scores = (v.tag_popularity / v.tag_popularity.sum()).repeat(len(playlists), 1) * 1e-3
        if method != "popular":
            if "title" in method:
                features = v.features([p["tags"] for p in playlists], [p["plylst_title"] for p in playlists])
                scores += spread(*features, v.tag_given_feature, len(v.tags))
            if "songs" in method:
                scores += spread(indptr, songs, v.tag_given_song, len(v.tags))
            if "recommended" in method:
                recommended = top_songs[:, :RECOMMENDED_FOR_TAGS]
                rec_indptr = torch.arange(0, recommended.numel() + 1, recommended.shape[1])
                scores += spread(rec_indptr, recommended.reshape(-1), v.tag_given_song, len(v.tags))
        own = v.tag_csr([p["tags"] for p in playlists])
        scores[row_ids(own[0]), own[1]] = float("-inf")
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return top.indices, top.values


def listed(values, scores):
    """Each row of `values` (numpy [rows, k]) as a list, without the entries whose score is -inf (a playlist's own
    songs or tags)."""
    kept = (scores != float("-inf")).numpy()
    if kept.all():
        return values.tolist()
    return [row[keep].tolist() for row, keep in zip(values, kept)]


def model_songs(model, num_items, fold_in_all=False, timings=None, fold_in_settings=None):
    """A song_source for a trained model (on any device; the scores come back to the CPU): users score with their
    own embeddings; the other playlists (every one with fold_in_all) are folded in first, all at once (with
    `fold_in_settings` over FOLD_IN's)."""
    device = next(model.parameters()).device

    def song_source(users, indptr, songs):
        new = (users < 0) | fold_in_all
        rows = new.nonzero().squeeze(1)
        folded_row = torch.full((len(users),), -1, dtype=torch.int64)
        folded_row[rows] = torch.arange(len(rows))
        started = time.perf_counter()
        folded = fold_in(model, *csr_rows(indptr, songs, rows), num_items, **(fold_in_settings or {})) \
            if len(rows) else None
        if timings is not None:
            timings.update(fold_in_seconds=time.perf_counter() - started, folded_in=len(rows))
        with torch.no_grad():
            trained, folded_score = checked_scorer(model), checked_scorer(folded) if folded else None

        @torch.no_grad()
        def scores_for(positions):
            out = torch.empty(len(positions), num_items)
            own = ~new[positions]
            if own.any():
                out[own] = trained(users[positions[own]].to(device)).float().cpu()
            if (~own).any():
                out[~own] = folded_score(folded_row[positions[~own]].to(device)).float().cpu()
            return out

        return scores_for

    return song_source


def for_model(model, data, data_dir, fold_in_all=False, tag_method=TAG_METHOD, feature_weight=FEATURE_WEIGHT,
              timings=None):
    """The Continuation of a trained model on its split (`data`, loaded from `data_dir`): playlists it was trained on
    by their own embeddings, the others (every one with `fold_in_all`) folded in."""
    return Continuation(data, Vocabulary(data, data_dir), model_songs(model, data.num_items, fold_in_all, timings),
                        tag_method, feature_weight=feature_weight)


def for_baseline(name, data, data_dir, tag_method=TAG_METHOD, feature_weight=FEATURE_WEIGHT):
    """The Continuation of the non-neural baseline `name` (baselines.py) fitted on `data`: its scores of each
    playlist's known songs; most popular (the Arena's own baseline) gives popular songs and tags to every playlist,
    whatever it holds."""
    fitted = baselines.fit(name, data)

    def song_source(users, indptr, songs):
        return lambda rows: fitted.history_scores(
            *(t.to(data.device) for t in csr_rows(indptr, songs, rows))).float().cpu()

    popular = name == "pop"
    return Continuation(data, Vocabulary(data, data_dir), song_source, "popular" if popular else tag_method,
                        fallback=not popular, feature_weight=0 if popular else feature_weight)


def check_room(continuation, questions, where="questions"):
    """An InputError naming the first question playlist that holds so many of the split's songs (or tags) that fewer
    than the Arena's 100 (10) new ones are left to recommend to it; only its known, distinct ones count."""
    song_indptr, _, _ = continuation.known_songs(questions)
    tag_indptr, _ = continuation.vocabulary.tag_csr([q["tags"] for q in questions])
    for what, have, need, indptr in (("song", continuation.data.num_items, ARENA_SONGS, song_indptr),
                                     ("tag", len(continuation.vocabulary.tags), ARENA_TAGS, tag_indptr)):
        if have < need:
            raise InputError(f"the split knows only {plural(have, what)}: too few to recommend {need} new ones")
        held = indptr.diff()
        short = (have - held < need).nonzero()
        if len(short):
            row = int(short[0])
            raise InputError(f"{where}: playlist {questions[row]['id']} holds {int(held[row]):,} of the split's "
                             f"{plural(have, what)}, leaving fewer than the {need} new ones an answer needs")


def answer_questions(continuation, questions, timings=None, where="questions"):
    """(results, number of the questions' songs unknown to the model): every question answered, in order, checked
    against the Arena's rules (first that each leaves enough songs and tags to recommend: check_room)."""
    check_room(continuation, questions, where)
    results, _, _, unknown = continuation.answer(questions, timings=timings)
    check_arena_results(results, [q["id"] for q in questions], "results")
    return results, unknown


def answer_file(continuation, questions_path, out=None, answers_path=None, timings=None, task=None):
    """The Arena task on files: the questions of `questions_path` answered (answer_questions), scored against the
    answers of `answers_path` when given (read_task checks them first to be those questions'), then written to
    `out` when given (checked by utils.check_output beforehand, if the caller did). `task`: read_task's (questions,
    answers) when the caller has read them already. Returns {"results", "unknown" (songs unknown to the model),
    "seconds", "score": (song nDCG, tag nDCG, score) or None}."""
    questions, answers = task if task is not None else read_task(questions_path, answers_path)
    started = time.perf_counter()
    results, unknown = answer_questions(continuation, questions, timings, questions_path)
    seconds = time.perf_counter() - started
    score = arena_score(results, answers, out or "results") if answers is not None else None
    if out is not None:
        write_results(out, results)
    return {"results": results, "unknown": unknown, "seconds": seconds, "score": score}
