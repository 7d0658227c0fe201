"""HR@K and NDCG@K, batched, on any device: sampled candidates (column 0 is the held-out item) and full ranking;
the Kakao Arena's playlist-continuation score (song nDCG@100, tag nDCG@10) and its rules for a results.json."""
import numpy as np
import pandas as pd
import torch

from utils import InputError

ARENA_SONGS, ARENA_TAGS = 100, 10
ARENA_WEIGHTS = (0.85, 0.15)  # song nDCG, tag nDCG


def held_out_rank(scores):
    """0-based rank of column 0 among the row's candidates. Ties and NaN count against the held-out item."""
    return (~(scores[:, 1:] < scores[:, :1])).sum(dim=1)


def hit_ratio_from_ranks(ranks, k):
    """HR@K: the share of rows whose held-out item ranks (0-based `ranks`) in the top K."""
    return (ranks < k).double().mean().item()


def ndcg_from_ranks(ranks, k):
    """NDCG@K with one relevant item: mean of 1/log2(rank + 1) (1-based rank) when it ranks in the top K, else 0."""
    gains = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gains, torch.zeros_like(gains)).mean().item()


def full_rank(scores, held_out, seen_rows, seen_items):
    """0-based rank of each row's held-out item among all items, the row's seen items excluded.

    scores [rows, items]; held_out [rows]; (seen_rows, seen_items) index the seen (row, item) pairs to exclude.
    Ties and NaN count against the held-out item.
    """
    held_out_scores = scores.gather(1, held_out[:, None])
    beaten = ~(scores < held_out_scores)
    beaten[seen_rows, seen_items] = False
    beaten.scatter_(1, held_out[:, None], False)
    return beaten.sum(dim=1)


def list_ndcg(recommended, answers, k):
    """nDCG@k of each ranked list in `recommended` against the same row's `answers` (lists of any hashable ids), as
    the Kakao Arena's evaluate.py computes it: gain 1/ln(rank + 2) (0-based rank) for every recommended id in the
    answer, over the ideal DCG of an answer of the answer's own length (not capped at k). A numpy array [rows]."""
    rec_rows = np.repeat(np.arange(len(recommended)), [min(len(r), k) for r in recommended])
    rec_ranks = np.concatenate([np.arange(min(len(r), k)) for r in recommended] + [np.zeros(0, np.int64)])
    answer_lengths = np.array([len(a) for a in answers], np.int64)
    codes, _ = pd.factorize(pd.Series([x for r in recommended for x in r[:k]] + [x for a in answers for x in a],
                                      dtype=object))
    width = max(len(codes), 1)
    rec_keys = rec_rows * width + codes[:len(rec_rows)]
    answer_keys = np.repeat(np.arange(len(answers)), answer_lengths) * width + codes[len(rec_rows):]
    gains = np.where(np.isin(rec_keys, answer_keys), 1.0 / np.log(rec_ranks + 2.0), 0.0)
    dcg = np.bincount(rec_rows, gains, minlength=len(recommended))
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log(np.arange(answer_lengths.max(initial=0)) + 2.0))])
    return dcg / ideal[answer_lengths]


def check_arena_results(results, question_ids, where="results"):
    """Raise InputError unless `results` (a list of {"id", "songs", "tags"}) follows the Arena's rules: one entry per
    id of `question_ids`, none other, each with ARENA_SONGS unique songs and ARENA_TAGS unique tags."""
    ids = [entry.get("id") if isinstance(entry, dict) else None for entry in results]
    if None in ids:
        raise InputError(f"{where}: entry {ids.index(None)} is not an object with an 'id'")
    duplicate = pd.Index(ids).duplicated()
    if duplicate.any():
        raise InputError(f"{where}: playlist id {ids[int(np.argmax(duplicate))]} appears twice")
    missing, extra = set(question_ids) - set(ids), set(ids) - set(question_ids)
    if missing or extra:
        problem = [f"{len(missing)} question ids missing (e.g. {min(missing)})"] if missing else []
        problem += [f"{len(extra)} ids that are not questions (e.g. {min(extra)})"] if extra else []
        raise InputError(f"{where}: the ids do not match the questions: " + ", ".join(problem))
    for entry in results:
        for field, count in (("songs", ARENA_SONGS), ("tags", ARENA_TAGS)):
            values = entry.get(field)
            if not isinstance(values, list) or len(values) != count or len(set(map(repr, values))) != count:
                raise InputError(f"{where}: playlist {entry['id']}: '{field}' must be a list of {count} unique "
                                 f"values, found {len(values) if isinstance(values, list) else type(values).__name__}"
                                 + (f" ({len(set(map(repr, values)))} unique)" if isinstance(values, list) else ""))


def arena_score(results, answers, where="results"):
    """(song nDCG@100, tag nDCG@10, score) of `results` against `answers` (lists of {"id", "songs", "tags"}), as the
    Arena scores a submission: its rules checked first (check_arena_results), each nDCG averaged over the
    playlists, score = 0.85 x song + 0.15 x tag. An answer with no songs or no tags has no ideal DCG: refused."""
    by_id = {answer["id"]: answer for answer in answers}
    check_arena_results(results, list(by_id), where)
    truths = [by_id[entry["id"]] for entry in results]
    for field in ("songs", "tags"):
        empty = next((truth["id"] for truth in truths if not truth[field]), None)
        if empty is not None:
            raise InputError(f"answers: playlist {empty} has no {field} to score against")
    song = list_ndcg([e["songs"] for e in results], [t["songs"] for t in truths], ARENA_SONGS).mean()
    tag = list_ndcg([e["tags"] for e in results], [t["tags"] for t in truths], ARENA_TAGS).mean()
    return float(song), float(tag), float(ARENA_WEIGHTS[0] * song + ARENA_WEIGHTS[1] * tag)


def arena_line(song, tag, score):
    """The line evaluate.py --continue prints last."""
    return f"song nDCG@{ARENA_SONGS} {song:.4f} tag nDCG@{ARENA_TAGS} {tag:.4f} score {score:.4f}"
