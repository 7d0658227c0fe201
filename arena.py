"""The Kakao Arena format (Melon Playlist Continuation): reading and checking playlists (train.json, questions,
answers, results), the Arena's local question/answer split, the answer lengths, the metric (0.85 x song nDCG@100 +
0.15 x tag nDCG@10) and the results writer."""
import itertools
import json
import random

import numpy as np
import pandas as pd

from utils import MISSING, InputError, atomic_open, plural, read_json

PLAYLIST_FIELDS = {"id": "int", "songs": "ints", "tags": "strs", "plylst_title": "str", "like_cnt": "any",
                   "updt_date": "any"}  # train.json's; tags and title may be absent, like_cnt and updt_date anything
ARENA_SONGS, ARENA_TAGS = 100, 10  # an answer's (and a result's) songs and tags
ANSWER_LENGTH = {"songs": ARENA_SONGS, "tags": ARENA_TAGS}
ARENA_WEIGHTS = (0.85, 0.15)  # song nDCG, tag nDCG


ARENA_SEED = 777  # the Arena's split_data.py: random.seed(777)


ARENA_KINDS = (  # kind, its end as a share of the questions (30%, 50%, 15%, 5%), fields masked to half, fields removed
    ("songs", 0.3, ("songs",), ("tags",)), ("songs+tags", 0.8, ("songs", "tags"), ()),
    ("tags", 0.95, ("tags",), ("songs",)), ("title", 1.0, (), ("songs", "tags")))


ARENA_QUESTION_SHARE = 0.2
INT64 = np.iinfo(np.int64)


def check_records(path, records, kinds):
    """Raise InputError naming the first record that is not an object whose fields (as kept by read_json) have
    the given kinds: "int", "ints" (a list of integers) or "date" (a string or an integer). One pass over the
    value types when all is well; a record-by-record scan only to name the bad one."""
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records")
    absent = type(MISSING)
    allowed = {"int": {int}, "ints": {list}, "date": {str, int}, "strs": {list, absent}, "str": {str, absent},
               "any": None}
    element = {"ints": int, "strs": str}

    def types(values):
        return set(map(type, values))

    def good_elements(kind, lists):
        return kind not in element or types(itertools.chain.from_iterable(
            values for values in lists if values is not MISSING)) <= {element[kind]}

    if types(records) <= {tuple} and all(
            (allowed[kind] is None or types(r[column] for r in records) <= allowed[kind])
            and good_elements(kind, (r[column] for r in records)) for column, kind in enumerate(kinds.values())):
        return check_id_range(path, records, kinds)
    want = {"int": "an integer", "ints": "a list of integer song ids", "date": "a YYYYMMDD string",
            "strs": "a list of strings", "str": "a string"}
    for index, record in enumerate(records):
        if type(record) is not tuple:
            raise InputError(f"{path}: record {index} is not a JSON object")
        for (key, kind), value in zip(kinds.items(), record):
            if value is MISSING and absent not in (allowed[kind] or {absent}):
                raise InputError(f"{path}: record {index} has no '{key}' field")
            if allowed[kind] is not None and (type(value) not in allowed[kind] or not good_elements(kind, [value])):
                found = "an object" if isinstance(value, tuple) else json.dumps(value, default=lambda _: "{...}")
                raise InputError(f"{path}: record {index}: '{key}' must be {want[kind]}, found {found[:60]}")


def check_id_range(path, records, kinds):
    """An InputError naming the record of the first "int" or "ints" field value outside 64-bit integers (ids are
    held as int64), for `records` of the right types."""
    for column, (key, kind) in enumerate(kinds.items()):
        if kind not in ("int", "ints"):
            continue
        lists = [[r[column]] for r in records] if kind == "int" else [r[column] for r in records]
        try:
            np.fromiter(itertools.chain.from_iterable(lists), np.int64)
            continue
        except OverflowError:
            pass
        index = next(i for i, values in enumerate(lists) if any(not INT64.min <= v <= INT64.max for v in values))
        wild = next(v for v in lists[index] if not INT64.min <= v <= INT64.max)
        raise InputError(f"{path}: record {index}: '{key}' holds {wild}, beyond the 64-bit integers that ids are")


def read_playlists(path):
    """The playlists of an Arena-format JSON file (train.json, val.json, test.json, questions, answers) as tuples
    of PLAYLIST_FIELDS (MISSING where absent); a one-line InputError for anything else. Ids are not checked here."""
    playlists = read_json(path, tuple(PLAYLIST_FIELDS))
    check_records(path, playlists, PLAYLIST_FIELDS)
    return playlists


def check_unique_ids(sources):
    """An InputError naming the file and record of the first playlist id seen twice in [(path, playlists)]."""
    seen = {}
    for path, playlists in sources:
        ids = pd.Index([p[0] for p in playlists])
        duplicate = ids.duplicated() | ids.isin(list(seen))
        if duplicate.any():
            index = int(np.argmax(duplicate))
            earlier = f" (also in {seen[ids[index]]})" if ids[index] in seen else ""
            raise InputError(f"{path}: record {index}: playlist id {ids[index]} appears twice{earlier}")
        seen.update(dict.fromkeys(ids.tolist(), path))


def as_record(playlist, **fields):
    """A playlist tuple as an Arena JSON object (absent fields left out), with `fields` replaced."""
    record = {key: value for key, value in zip(PLAYLIST_FIELDS, playlist) if value is not MISSING}
    return {**record, **fields}


def arena_split(playlists, seed=ARENA_SEED):
    """The Kakao Arena's local split (its split_data.py): playlists shuffled (Python's random.shuffle, seeded as
    the Arena seeds it, so the same train.json gives the Arena's own partition), the last 20% made questions of the
    ARENA_KINDS in order: half of a field's values kept at random in the question and the other half in the answer,
    a removed field empty in the question and whole (cut to 100 songs, 10 tags) in the answer; the questions
    shuffled. Returns (training playlists, question playlists as tuples, questions and answers as JSON objects in
    the same order, {kind: count})."""
    playlists = list(playlists)
    random.Random(seed).shuffle(playlists)
    first = int(len(playlists) * (1 - ARENA_QUESTION_SHARE))
    questions, answers, kinds = arena_questions(playlists[first:], np.random.default_rng(seed))
    asked = [tuple(q.get(key, MISSING) for key in PLAYLIST_FIELDS) for q in questions]
    return playlists[:first], asked, questions, answers, kinds


def arena_questions(asked, rng):
    """(questions, answers, {kind: count}) of the playlists `asked` (tuples), as the Arena's split_data.py makes
    them: the ARENA_KINDS in order, the questions shuffled by `rng`."""
    kinds, questions, answers, begin = {}, [], [], 0
    for kind, end, masked, removed in ARENA_KINDS:
        group, begin = asked[begin:int(len(asked) * end)], int(len(asked) * end)
        kinds[kind] = len(group)
        for playlist in group:
            question, answer = as_record(playlist), as_record(playlist)
            for field in ("songs", "tags"):
                values = question.get(field, [])
                if field in masked:
                    keep = np.zeros(len(values), bool)
                    keep[rng.permutation(len(values))[:len(values) // 2]] = True
                    question[field] = [v for v, k in zip(values, keep) if k]
                    answer[field] = [v for v, k in zip(values, keep) if not k][:ANSWER_LENGTH[field]]
                elif field in removed:
                    question[field], answer[field] = [], values[:ANSWER_LENGTH[field]]
                else:
                    answer[field] = []
            questions.append(question)
            answers.append(answer)
    order = rng.permutation(len(questions))
    return [questions[i] for i in order], [answers[i] for i in order], kinds


def read_questions(path):
    """[{"id", "songs", "tags", "plylst_title"}] of an Arena-format JSON list (a question file, or playlists for
    --playlist); one-line InputError for a file that is not one, or that holds an id twice."""
    playlists = read_playlists(path)
    check_unique_ids([(path, playlists)])
    return [{"id": p[0], "songs": p[1], "tags": [] if p[2] is MISSING else p[2],
             "plylst_title": "" if p[3] is MISSING else p[3]} for p in playlists]


def read_task(questions_path, answers_path=None):
    """(questions, answers or None) of the Arena task's files, read and checked before any work: at least one
    question; answers, when given, for exactly those questions (how many ids differ otherwise), each with songs and
    tags to score against. One-line InputErrors naming the file."""
    questions = read_questions(questions_path)
    if not questions:
        raise InputError(f"{questions_path}: no playlists (an empty list)")
    if answers_path is None:
        return questions, None
    answers = read_questions(answers_path)
    asked, answered = {q["id"] for q in questions}, {a["id"] for a in answers}
    if asked != answered:
        differ = [f"{plural(len(asked - answered), 'question')} without an answer (e.g. {min(asked - answered)})"
                  if asked - answered else "",
                  f"{plural(len(answered - asked), 'answer')} to no question (e.g. {min(answered - asked)})"
                  if answered - asked else ""]
        raise InputError(f"{answers_path}: its playlist ids are not those of {questions_path}: "
                         + ", ".join(filter(None, differ)))
    check_answers(answers, answers_path)
    return questions, answers


def check_answers(answers, where="answers"):
    """An InputError naming `where` and the first answer with no songs or no tags: it has no ideal DCG to score
    against."""
    for field in ("songs", "tags"):
        empty = next((answer["id"] for answer in answers if not answer[field]), None)
        if empty is not None:
            raise InputError(f"{where}: playlist {empty} has no {field} to score against")


def write_results(path, results):
    with atomic_open(path, encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


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
        problem = [f"{plural(len(missing), 'question id')} missing (e.g. {min(missing)})"] if missing else []
        problem += [f"{plural(len(extra), 'id')} not among the questions (e.g. {min(extra)})"] if extra else []
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
    check_answers(truths)
    song = list_ndcg([e["songs"] for e in results], [t["songs"] for t in truths], ARENA_SONGS).mean()
    tag = list_ndcg([e["tags"] for e in results], [t["tags"] for t in truths], ARENA_TAGS).mean()
    return float(song), float(tag), float(ARENA_WEIGHTS[0] * song + ARENA_WEIGHTS[1] * tag)


def arena_line(song, tag, score):
    """The line evaluate.py --continue prints last."""
    return f"song nDCG@{ARENA_SONGS} {song:.4f} tag nDCG@{ARENA_TAGS} {tag:.4f} score {score:.4f}"
