"""The command line of a trained model: score a checkpoint on held-out items, recommend songs for a playlist, list
the songs nearest to a song, or answer Kakao Arena questions (a checkpoint's model or a non-neural baseline).

    python3 evaluate.py --checkpoint runs/NAME/best.pt [--eval full] [--split val]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --recommend PLAYLIST_ID [--k 10]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --similar SONG_ID [--k 10]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --continue QUESTIONS.json --out submission.json \
        [--answers ANSWERS.json]                  # the Kakao Arena task: 100 songs, 10 tags a question
    python3 evaluate.py --checkpoint runs/NAME/best.pt --playlist PLAYLISTS.json [--k 10]   # known or new

What it prints it gets from scoring.py (ranks, HR/NDCG, recommendations), catalog.py (names) and continuation.py
(the Arena task); this file holds the command line and its terminal tables.
"""
import math
import os
import sys
import unicodedata

import baselines
import blend
import continuation
import dataloader
from arena import ARENA_TAGS, arena_line, read_task
from catalog import item_names, playlist_title
from runs import SPLIT_SUFFIXES, load_checkpoint, model_from_checkpoint, split_changes, split_of
from scoring import recommend, score, similar_items, user_items
from utils import InputError, Parser, check_output, keep_freed_memory, plural, resolve_device, run_cli


def index_of(original, ids, flag, what):
    """Index of the original id `original` (command-line text) in `ids`; a one-line error naming it if absent."""
    try:
        return [str(x) for x in ids].index(original.strip())
    except ValueError:
        raise InputError(f"{flag} {original}: no {what} with this id in the data set") from None


def width(text):
    """Terminal columns `text` takes: East Asian wide characters (Hangul, CJK, most emoji) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(header, rows, right=()):
    """An aligned plain-text table; columns with their index in `right` are right-aligned."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(header))]

    def pad(text, i):
        gap = " " * (widths[i] - width(text))
        return gap + text if i in right else text + gap

    return "\n".join("  ".join(pad(c, i) for i, c in enumerate(row)).rstrip() for row in cells)


def item_table(catalog, items, scores=None, score_name="score"):
    """An aligned table of the `catalog` entries of `items`, numbered, with their scores when given."""
    fields = [f for f in next(iter(catalog.values())) if f != "id"]
    header = ["rank" if scores is not None else "#", "id"] + ([score_name] if scores is not None else []) + fields
    rows = [[rank, catalog[i]["id"]] + ([f"{scores[rank - 1]:.3f}"] if scores is not None else [])
            + [catalog[i][f] for f in fields] for rank, i in enumerate(items, 1)]
    return table(header, rows, right=(0, 2) if scores is not None else (0,))


def print_recommendations(model, data, playlist_id, k, shown=5):
    """The playlist's title and first `shown` songs, then its top-k recommendations with names."""
    users, items = ("playlist", "song") if data.meta.get("format") == "melon" else ("user", "item")
    user = index_of(playlist_id, data.meta.get("user_ids", range(data.num_users)), "--recommend", users)
    top, scores = recommend(model, data, user, k)
    own = user_items(data, user).tolist()
    catalog = item_names(data.meta, own[:shown] + top.tolist())
    title = playlist_title(data.meta, user)
    print(f"{users} {playlist_id}" + (f' "{title}"' if title else "")
          + f": {len(own)} {items}s in the split; the first {min(shown, len(own))}:")
    print(item_table(catalog, own[:shown]))
    print(f"\ntop {len(top)} {items}s for {users} {playlist_id}, not already in it, by model score (logit):")
    print(item_table(catalog, top.tolist(), scores.tolist()))


def print_similar(model, data, song_id, k):
    """The song, then the k songs nearest to it in the learned item embeddings, with names."""
    items = "song" if data.meta.get("format") == "melon" else "item"
    item = index_of(song_id, data.meta.get("item_ids", range(data.num_items)), "--similar", items)
    top, similarity = similar_items(model, item, k)
    catalog = item_names(data.meta, [item] + top.tolist())
    print(f"{items} {song_id}:")
    print(item_table(catalog, [item]))
    print(f"\n{len(top)} {items}s nearest in the learned item embeddings (cosine) to {items} {song_id}:")
    print(item_table(catalog, top.tolist(), similarity.tolist(), "cosine"))


def chosen_method(checkpoint, args):
    """The blend.py method of --continue / --playlist, or None for the seed's Continuation: --method's, else the one
    the checkpoint's run validated (main.py --recipe arena); one line says which."""
    recorded = (checkpoint or {}).get("continuation")
    if args.method is None and (recorded is None or args.baseline is not None):
        return None
    method = blend.named_method(recorded or blend.UNVALIDATED, args.method or recorded["name"])
    how = ("validated by main.py --recipe arena" if args.method is None
           else f"--method, with the {'validated' if recorded else 'default (no validated method in the checkpoint)'} "
                f"settings")
    weights = "; ".join(f"{part} " + ", ".join(f"{k} {w:g}" for k, w in method[part].items() if w)
                        for part in blend.PARTS if method[part])
    print(f"method: {method['name']} ({how}){': ' + weights if weights else ''}")
    return method


def answering_for(model, data, data_dir, args, timings=None):
    """What answers --continue / --playlist: the blend.py method of chosen_method (args.method_settings), else the
    model's songs (or a --baseline's) with --tag_method's tags."""
    if args.method_settings is not None:
        return blend.Scorers(data, continuation.Vocabulary(data, data_dir), args.method_settings, model,
                             args.fold_in == "all", timings, show_progress=True)
    if args.baseline is not None:
        return continuation.for_baseline(args.baseline, data, data_dir, args.tag_method, args.feature_weight)
    return continuation.for_model(model, data, data_dir, args.fold_in == "all", args.tag_method, args.feature_weight,
                                  timings)


def continue_questions(model, data, data_dir, args, task):
    """--continue: the results file for every question of `task` (read_task's questions and answers; and the Arena
    score with --answers, printed last)."""
    timings = {}
    answering = answering_for(model, data, data_dir, args, timings)
    done = continuation.answer_file(answering, args.continue_, args.out, args.answers, timings, task)
    if done["unknown"]:
        print(f"note: {plural(done['unknown'], 'song')} of the questions {'is' if done['unknown'] == 1 else 'are'} "
              f"unknown to the model (not in split {data.name!r}): skipped")
    folded = (f"{timings['folded_in']:,} folded in ({timings['fold_in_seconds']:.1f}s), "
              if timings.get("folded_in") else "")
    parts = (f"songs {timings.get('songs_seconds', 0):.1f}s, tags {timings.get('tags_seconds', 0):.1f}s"
             if args.method_settings is None else
             f"neighbours and model {timings['prepare_seconds']:.1f}s, blend "
             f"{timings['answer_seconds'] - timings['prepare_seconds']:.1f}s")
    print(f"wrote {args.out}: {plural(len(done['results']), 'playlist')}, 100 songs and 10 tags each, in "
          f"{done['seconds']:.1f}s ({folded}{parts})")
    if done["score"] is not None:
        print(arena_line(*done["score"]))


def print_playlists(model, data, data_dir, args, k, playlists):
    """--playlist: each of `playlists`' top-k songs with names (fewer when fewer are not in it) and its 10 tags."""
    answering = answering_for(model, data, data_dir, args)
    results, top, scores, unknown = answering.answer(playlists, k_songs=k, k_tags=ARENA_TAGS)
    catalog = item_names(data.meta, top.reshape(-1).tolist())
    users = set(data.meta.get("user_ids", ()))
    indptr, _, _ = answering.known_songs(playlists)
    for playlist, songs, song_scores, result, known in zip(playlists, top.tolist(), scores.tolist(), results,
                                                            (indptr[1:] - indptr[:-1]).tolist()):
        how = ("trained on" if playlist["id"] in users and args.baseline is None
               else "new: folded in" if known and args.baseline is None
               else f"{args.baseline} on its songs" if known else "no known song: by its tags and title")
        title = f' "{playlist["plylst_title"]}"' if playlist["plylst_title"] else ""
        listed = len(result["songs"])  # its own songs, at -inf among the top ones, are not listed
        print(f"playlist {playlist['id']}{title} ({how}; {plural(len(playlist['songs']), 'song')}, "
              f"{plural(len(playlist['tags']), 'tag')}): top {plural(listed, 'song')} not already in it"
              + (" (all that are left)" if listed < k else "") + ":")
        print(item_table(catalog, songs[:listed], song_scores[:listed]))
        print(f"tags: {', '.join(result['tags'])}\n")
    if unknown:
        print(f"note: {plural(unknown, 'song')} of the playlists {'is' if unknown == 1 else 'are'} unknown to the "
              f"model: skipped")


def build_parser():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="best.pt or last.pt written by main.py")
    parser.add_argument("--eval", choices=["sampled", "full"], default="sampled",
                        help="sampled: held-out item among its 99 negatives; full: among all unseen items")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="which held-out items to score")
    parser.add_argument("--k", type=int, default=None,
                        help="cut-off K, or songs to list (default: the run's --topk)")
    parser.add_argument("--gpu", default="0", help="CUDA index, or cpu")
    task = parser.add_mutually_exclusive_group()
    task.add_argument("--recommend", metavar="PLAYLIST_ID",
                      help="list the K best songs not already in this playlist (its original id)")
    task.add_argument("--similar", metavar="SONG_ID",
                      help="list the K songs nearest to this song (its original id) in the learned item embeddings")
    task.add_argument("--continue", dest="continue_", metavar="QUESTIONS_JSON",
                      help="the Kakao Arena task: 100 songs and 10 tags for every playlist of this question file "
                           "(Arena format), written to --out")
    task.add_argument("--playlist", metavar="PLAYLISTS_JSON",
                      help="list the K best songs and 10 tags for each playlist of this Arena-format file")
    parser.add_argument("--out", help="--continue: the Arena results file (submission) to write")
    parser.add_argument("--answers", help="--continue: the answers (Arena format) to score the results against")
    parser.add_argument("--fold_in", choices=["unseen", "all"], default="unseen",
                        help="--continue/--playlist: fold in the playlists the model was not trained on, or all")
    parser.add_argument("--tag_method", choices=continuation.TAG_METHODS, default=continuation.TAG_METHOD,
                        help="--continue/--playlist: what the tags come from")
    parser.add_argument("--feature_weight", type=float, default=continuation.FEATURE_WEIGHT,
                        help="--continue/--playlist: weight of the songs that a playlist's tags and title words "
                             "co-occur with, added to its song scores (both standardised); 0: song scores alone")
    parser.add_argument("--baseline", choices=baselines.NAMES, default=None,
                        help="--continue/--playlist: songs from this non-neural baseline (baselines.py) fitted on "
                             "the checkpoint's split instead of the model, or without --checkpoint on --dataset's")
    parser.add_argument("--method", choices=blend.METHODS, default=None,
                        help="--continue/--playlist: answer by this method (blend.py) instead of the one the "
                             "checkpoint's run validated (main.py --recipe arena): the model alone, a neighbour "
                             "method alone, the blend, most popular")
    parser.add_argument("--data_dir", default=None, help="the split's directory (default: the checkpoint's; "
                        "without --checkpoint: data)")
    parser.add_argument("--dataset", help="the split's name (default: the checkpoint's); a checkpoint's model must "
                        "fit the split given (its users and items)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.continue_ is not None and not args.out:
        parser.error("--continue needs --out FILE (the Arena results to write)")
    for flag in ("out", "answers"):
        if getattr(args, flag) and args.continue_ is None:
            parser.error(f"--{flag} goes with --continue")
    if args.checkpoint is None and not (args.baseline and args.dataset and (args.continue_ or args.playlist)):
        parser.error("--checkpoint is required (or --baseline NAME --dataset NAME with --continue or --playlist)")
    if args.k is not None and args.k < 1:
        parser.error("--k must be at least 1")
    if args.method is not None and (args.baseline is not None or not (args.continue_ or args.playlist)):
        parser.error("--method goes with --continue or --playlist, not with --baseline")
    if not math.isfinite(args.feature_weight):
        parser.error(f"--feature_weight must be a finite number, got {args.feature_weight}")
    return args


def read_inputs(args):
    """What --continue and --playlist read, checked before any work (--out too: not a directory, not an input, ...):
    read_task's (questions, answers), or None for the other tasks."""
    if args.continue_ is not None:
        check_output(args.out, "--out", [("--continue", args.continue_), ("--answers", args.answers),
                                         ("--checkpoint", args.checkpoint)])
        return read_task(args.continue_, args.answers)
    return read_task(args.playlist) if args.playlist is not None else None


def check_out_against_split(args, data_dir, dataset):
    """--out checked again once the split is known: not one of its files (read by the work, or by the next run)."""
    if args.out is not None:
        check_output(args.out, "--out", [("split file", os.path.join(data_dir, f"{dataset}.{suffix}"))
                                         for suffix in (*SPLIT_SUFFIXES, "tags.json", "questions.json",
                                                        "answers.json")])


def run_task(model, data, data_dir, args, k, task):
    """The task the flags ask for, with `model` (None for a --baseline alone) on `data`; `task`: read_inputs'."""
    if args.recommend is not None:
        return print_recommendations(model, data, args.recommend, k)
    if args.similar is not None:
        return print_similar(model, data, args.similar, k)
    if args.continue_ is not None:
        return continue_questions(model, data, data_dir, args, task)
    if args.playlist is not None:
        return print_playlists(model, data, data_dir, args, k, task[0])
    candidates = data.test if args.split == "test" else data.val
    if candidates is None:
        raise InputError(f"--split val: data set {data.name!r} has no validation split (split.py --val)")
    hr, ndcg = score(model, data, candidates, k, args.eval)
    print(f"{args.checkpoint} (epoch {args.epoch}, {args.eval} {args.split}): HR@{k} {hr:.4f} NDCG@{k} {ndcg:.4f}")


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    task = read_inputs(args)
    device = resolve_device(args.gpu)
    if args.checkpoint is None:
        data_dir = args.data_dir or "data"
        check_out_against_split(args, data_dir, args.dataset)
        data = dataloader.load(data_dir, args.dataset, device)
        args.method_settings = chosen_method(None, args)
        return run_task(None, data, data_dir, args, 10 if args.k is None else args.k, task)
    checkpoint = load_checkpoint(args.checkpoint, device)
    data_dir, dataset = split_of(checkpoint, args.checkpoint, args.data_dir, args.dataset)
    check_out_against_split(args, data_dir, dataset)
    data = dataloader.load(data_dir, dataset, device)
    args.method_settings = chosen_method(checkpoint, args) if args.continue_ or args.playlist else None
    model = model_from_checkpoint(checkpoint, data, args.checkpoint)
    changed = split_changes(checkpoint, data_dir, dataset)
    if changed:
        print(f"warning: {changed[0]} is not the file {args.checkpoint} was trained on: the scores are for other "
              f"data", file=sys.stderr)
    args.epoch = checkpoint["epoch"]
    return run_task(model, data, data_dir, args, checkpoint["config"]["topk"] if args.k is None else args.k, task)


if __name__ == "__main__":
    run_cli(main)
