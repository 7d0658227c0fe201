"""Score a checkpoint on held-out items, recommend songs for a playlist, or list the songs nearest to a song.

    python3 evaluate.py --checkpoint runs/NAME/best.pt [--eval full] [--split val]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --recommend PLAYLIST_ID [--k 10]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --similar SONG_ID [--k 10]
    python3 evaluate.py --checkpoint runs/NAME/best.pt --continue QUESTIONS.json --out results.json \
        [--answers ANSWERS.json]                  # the Kakao Arena task: 100 songs, 10 tags a question
    python3 evaluate.py --checkpoint runs/NAME/best.pt --playlist PLAYLISTS.json [--k 10]   # known or new

The functions take a model in memory: score, evaluate / evaluate_full (HR@K, NDCG@K in batches), recommend (the top-K
items a user has no interaction with), similar_items (nearest items in the learned embeddings), item_names
(original ids and names of items) and playlist_title.
"""
import os
import sys
import time
import unicodedata
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import blend
import continuation
import dataloader
from metrics import arena_line, arena_score, check_arena_results, full_rank, held_out_rank, hit_ratio_from_ranks, ndcg_from_ranks
from model import build_model
from runs import load_checkpoint, split_changes
from utils import MISSING, InputError, Parser, read_json, resolve_device, run_cli

SONG_FIELDS = ("id", "song_name", "artist_name_basket", "song_gn_gnr_basket", "issue_date")


@contextmanager
def evaluating(model):
    """The model in eval mode inside the block; its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sampled_ranks(model, candidates, batch_pairs=1 << 13):
    """0-based rank of each row's held-out item among its candidates, scored `batch_pairs` pairs at a time."""
    rows_per_batch = max(1, batch_pairs // candidates.items.shape[1])
    ranks = []
    with evaluating(model):
        score = model.candidate_scorer()
        for users, items in dataloader.batches([candidates.users, candidates.items], rows_per_batch):
            scores = score(users, items).float()
            # The NCF paper's ML-1M file lists some held-out items among their own negatives: not a negative.
            scores[:, 1:].masked_fill_(items[:, 1:] == items[:, :1], float("-inf"))
            ranks.append(held_out_rank(scores))
    return torch.cat(ranks)


@torch.no_grad()
def full_ranks(model, data, candidates, batch_pairs=1 << 20):
    """0-based rank of each row's held-out item among all items the user has not interacted with in training."""
    rows_per_batch = max(1, batch_pairs // data.num_items)
    ranks = []
    with evaluating(model):
        score = model.candidate_scorer()
        for users, held_out in dataloader.batches([candidates.users, candidates.items[:, 0]], rows_per_batch):
            scores = score(users).float()
            seen_indptr, seen_items = dataloader.csr_rows(data.seen_indptr, data.seen_items, users)
            ranks.append(full_rank(scores, held_out, dataloader.row_ids(seen_indptr), seen_items))
    return torch.cat(ranks)


def score(model, data, candidates, k=10, protocol="sampled", ctx=None):
    """(HR@k, NDCG@k) over `candidates` (column 0 the held-out item), scored in batches, with the held-out item
    ranked among the row's candidates (protocol "sampled") or among all items unseen in training in `data`
    ("full"). With `ctx` (a distributed.Context) every rank ranks every world_size-th row, and all get the
    figures of all rows."""
    if ctx is not None and ctx.world_size > 1:
        candidates = dataloader.Candidates(candidates.users[ctx.rank::ctx.world_size],
                                           candidates.items[ctx.rank::ctx.world_size])
    ranks = sampled_ranks(model, candidates) if protocol == "sampled" else full_ranks(model, data, candidates)
    if ctx is not None:
        ranks = ctx.gather_rows(ranks)
    return hit_ratio_from_ranks(ranks, k), ndcg_from_ranks(ranks, k)


def evaluate(model, candidates, k=10):
    """(HR@k, NDCG@k) of the held-out items among their sampled candidates."""
    return score(model, None, candidates, k)


def evaluate_full(model, data, candidates, k=10):
    """(HR@k, NDCG@k) with the held-out item ranked among all items unseen in training."""
    return score(model, data, candidates, k, "full")


def user_items(data, user):
    """Every item of user index `user`: its training items in file order, then its validation and test items."""
    seen = data.seen_items[data.seen_indptr[user]:data.seen_indptr[user + 1]]
    return torch.cat([seen, data.test.items[data.test.users == user, 0]])


@torch.no_grad()
def recommend(model, data, user, k=10):
    """(items, scores): the k best-scored items for user index `user` among those it has no interaction with
    (training, validation or test), best first; fewer when fewer are left. Scores are the model's logits."""
    with evaluating(model):
        scores = model.candidate_scorer()(torch.tensor([user], device=data.device))[0].float()
    own = torch.zeros(data.num_items, dtype=torch.bool, device=data.device)
    own[user_items(data, user)] = True
    top = scores.masked_fill(own, float("-inf")).topk(min(k, int((~own).sum())))
    return top.indices, top.values


@torch.no_grad()
def similar_items(model, item, k=10):
    """(items, similarities): the k items nearest to item index `item` by cosine similarity of the learned item
    embeddings (GMF and MLP ones each L2-normalised, then concatenated), the item itself excluded."""
    parts = [F.normalize(getattr(model, name).weight, dim=1)
             for name in ("item_gmf", "item_mlp") if hasattr(model, name)]
    vectors = F.normalize(torch.cat(parts, dim=1), dim=1)
    similarity = vectors @ vectors[item]
    similarity[item] = float("-inf")
    top = similarity.topk(min(k, len(vectors) - 1))
    return top.indices, top.values


def read_records(path, ids, keys):
    """{id: {key: value (None where absent)}} for the records of the JSON list `path` whose "id" is in `ids`
    (`keys` includes "id"); the other records are dropped as they are parsed, so a large file costs little memory."""
    records = read_json(path, keys, where=lambda record: record.get("id") in ids)
    found = [dict(zip(keys, record)) for record in records if isinstance(record, tuple)] \
        if isinstance(records, list) else []
    return {fields["id"]: {key: None if value is MISSING else value for key, value in fields.items()}
            for fields in found}


def read_artists(path, ids):
    """{id: name} from a Last.fm artists.dat (`id<TAB>name<TAB>url<TAB>pictureURL`, a header line) for string `ids`."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        next(f, None)
        rows = (line.rstrip("\n").split("\t") for line in f)
        return {row[0]: row[1] for row in rows if row[0] in ids and len(row) > 1}


def genre_names(song_meta_path):
    """{code: name} from genre_gn_all.json beside song_meta.json (the real download has it: "GN0100": "발라드"),
    or {} when there is none; a one-line error if it is there but not such a JSON object."""
    path = os.path.join(os.path.dirname(song_meta_path), "genre_gn_all.json")
    if not os.path.exists(path):
        return {}
    names = read_json(path, None)
    if not isinstance(names, dict) or not all(isinstance(name, str) for name in names.values()):
        raise InputError(f"{path}: expected a JSON object mapping genre codes to names")
    return names


def named(codes, names):
    """A basket of codes (a list, or one code) with each code replaced by its name where `names` has one."""
    codes = [] if codes is None else codes if isinstance(codes, list) else [codes]
    return [names.get(code, code) if isinstance(code, str) else code for code in codes]


def joined(value):
    """A JSON value as display text: list elements joined by commas."""
    return ", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)


def item_names(meta, items):
    """{item index: {"id": original id, then names}} for the item indices `items`. Names: "song", "artists", "genre"
    and "released" from song_meta.json (Melon splits), or "artist" from artists.dat beside the source file (Last.fm);
    none without such a file. Genres are named from genre_gn_all.json beside song_meta.json when it is there (the
    code where it has no name). Without meta.json (the NCF paper's files) the id is the index."""
    ids = meta.get("item_ids")
    catalog = {i: {"id": ids[i] if ids else i} for i in items}
    wanted = {entry["id"] for entry in catalog.values()}
    artists_path = os.path.join(os.path.dirname(meta.get("source", "")), "artists.dat")
    if meta.get("song_meta") and os.path.exists(meta["song_meta"]):
        songs = read_records(meta["song_meta"], wanted, SONG_FIELDS)
        genres = genre_names(meta["song_meta"])
        for entry in catalog.values():
            song = songs.get(entry["id"], {})
            date = joined(song.get("issue_date"))
            entry.update(song=joined(song.get("song_name")), artists=joined(song.get("artist_name_basket")),
                         genre=joined(named(song.get("song_gn_gnr_basket"), genres)),
                         released=f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else date)
    elif meta.get("format") == "delimited" and os.path.exists(artists_path):
        names = read_artists(artists_path, {str(x) for x in wanted})
        for entry in catalog.values():
            entry["artist"] = names.get(str(entry["id"]), "")
    return catalog


def playlist_title(meta, user):
    """The title (`plylst_title` in the source train.json) of the Melon playlist with index `user`, or None."""
    source = meta.get("source", "")
    if meta.get("format") != "melon" or not os.path.exists(source):
        return None
    playlist_id = meta["user_ids"][user]
    return read_records(source, {playlist_id}, ("id", "plylst_title")).get(playlist_id, {}).get("plylst_title")


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


def continuation_for(model, data, data_dir, args, timings=None):
    """The Continuation of --continue / --playlist: the model's songs (or a --baseline's), --tag_method's tags;
    the split's tags and titles from DATA_DIR/NAME.tags.json."""
    if args.baseline is not None:
        import baselines
        fitted = baselines.fit(args.baseline, data)

        def song_source(users, indptr, songs):
            return lambda rows: fitted.history_scores(
                *(t.to(data.device) for t in dataloader.csr_rows(indptr, songs, rows))).float().cpu()

        # most popular is the Arena's own baseline: popular songs and tags for every playlist, whatever it holds
        popular = args.baseline == "pop"
        return continuation.Continuation(data, continuation.Vocabulary(data, data_dir), song_source,
                                         "popular" if popular else args.tag_method, fallback=not popular,
                                         feature_weight=0 if popular else args.feature_weight)
    return continuation.for_model(model, data, data_dir, args.fold_in == "all", args.tag_method, args.feature_weight,
                                  timings)


def continue_questions(model, data, data_dir, args):
    """--continue: results.json for every question (and its Arena score with --answers, printed last)."""
    questions = continuation.read_questions(args.continue_)
    answers = continuation.read_questions(args.answers) if args.answers else None
    if answers is not None and {a["id"] for a in answers} != {q["id"] for q in questions}:
        raise InputError(f"--answers {args.answers}: its playlist ids are not those of {args.continue_}")
    started, timings = time.perf_counter(), {}
    answering = continuation_for(model, data, data_dir, args, timings)
    results, unknown = continuation.continue_questions(answering, questions, timings)
    seconds = time.perf_counter() - started
    if unknown:
        print(f"note: {unknown:,} songs of the questions are unknown to the model (not in split {data.name!r}): "
              f"skipped")
    continuation.write_results(args.out, results)
    folded = (f"{timings['folded_in']:,} folded in ({timings['fold_in_seconds']:.1f}s), "
              if timings.get("folded_in") else "")
    print(f"wrote {args.out}: {len(results):,} playlists, 100 songs and 10 tags each, in {seconds:.1f}s "
          f"({folded}songs {timings.get('songs_seconds', 0):.1f}s, tags {timings.get('tags_seconds', 0):.1f}s)")
    if answers is not None:
        print(arena_line(*arena_score(results, answers, args.out)))


def chosen_method(checkpoint, args):
    """The method --continue answers with (blend.py), or None for the seed's Continuation: --method's, else the one
    the checkpoint's run validated (main.py --recipe arena); one line says which."""
    recorded = (checkpoint or {}).get("continuation")
    if args.method is None and recorded is None:
        return None
    method = blend.named_method(recorded or blend.UNVALIDATED, args.method or recorded["name"])
    how = ("validated by main.py --recipe arena" if args.method is None
           else f"--method, with the {'validated' if recorded else 'default (no validated method in the checkpoint)'} "
                f"settings")
    weights = "; ".join(f"{part} " + ", ".join(f"{k} {w:g}" for k, w in method[part].items() if w)
                        for part in ("songs", "no_songs", "tags") if method[part])
    print(f"method: {method['name']} ({how}){': ' + weights if weights else ''}")
    return method


def continue_by_method(model, data, data_dir, method, args):
    """--continue with a blend.py method: results.json (and its Arena score with --answers, printed last)."""
    questions = continuation.read_questions(args.continue_)
    answers = continuation.read_questions(args.answers) if args.answers else None
    if answers is not None and {a["id"] for a in answers} != {q["id"] for q in questions}:
        raise InputError(f"--answers {args.answers}: its playlist ids are not those of {args.continue_}")
    started, timings = time.perf_counter(), {}
    scorers = blend.Scorers(data, continuation.Vocabulary(data, data_dir), method, model, args.fold_in == "all",
                            timings)
    results, unknown = blend.answer(scorers, questions, timings, blend.progress_lines(print))
    check_arena_results(results, [q["id"] for q in questions], "results")
    continuation.write_results(args.out, results)
    folded = (f" ({timings['folded_in']:,} folded in, {timings['fold_in_seconds']:.1f}s)"
              if timings.get("folded_in") else "")
    print(f"wrote {args.out}: {len(results):,} playlists, 100 songs and 10 tags each, in "
          f"{time.perf_counter() - started:.1f}s{folded}"
          + (f"; {unknown:,} of their songs unknown to the split: skipped" if unknown else ""))
    if answers is not None:
        print(arena_line(*arena_score(results, answers, args.out)))


def print_playlists(model, data, data_dir, args, k):
    """--playlist: each playlist's top-k songs with names and its 10 tags."""
    playlists = continuation.read_questions(args.playlist)
    answering = continuation_for(model, data, data_dir, args)
    results, top, scores, unknown = answering.answer(playlists, k_songs=k, k_tags=continuation.ARENA_TAGS)
    catalog = item_names(data.meta, top.reshape(-1).tolist())
    users = set(data.meta.get("user_ids", ()))
    indptr, _, _ = answering.known_songs(playlists)
    for playlist, songs, song_scores, result, known in zip(playlists, top.tolist(), scores.tolist(), results,
                                                            (indptr[1:] - indptr[:-1]).tolist()):
        how = ("trained on" if playlist["id"] in users and args.baseline is None
               else "new: folded in" if known and args.baseline is None
               else f"{args.baseline} on its songs" if known else "no known song: by its tags and title")
        title = f' "{playlist["plylst_title"]}"' if playlist["plylst_title"] else ""
        print(f"playlist {playlist['id']}{title} ({how}; {len(playlist['songs'])} songs, "
              f"{len(playlist['tags'])} tags): top {k} songs not already in it:")
        print(item_table(catalog, songs, song_scores))
        print(f"tags: {', '.join(result['tags'])}\n")
    if unknown:
        print(f"note: {unknown:,} songs of the playlists are unknown to the model: skipped")


def model_from_checkpoint(checkpoint, data):
    config = checkpoint["config"]
    model = build_model(data.num_users, data.num_items, config["latent_dim_mf"], config["num_layers"], config["model"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise InputError(f"checkpoint does not fit data set {data.name!r} ({str(e).splitlines()[0][:120]})")
    return model.to(data.device)


def main():
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
    parser.add_argument("--out", help="--continue: the results.json to write")
    parser.add_argument("--answers", help="--continue: the answers (Arena format) to score the results against")
    parser.add_argument("--fold_in", choices=["unseen", "all"], default="unseen",
                        help="--continue/--playlist: fold in the playlists the model was not trained on, or all")
    parser.add_argument("--tag_method", choices=continuation.TAG_METHODS, default=continuation.TAG_METHOD,
                        help="--continue/--playlist: what the tags come from")
    parser.add_argument("--feature_weight", type=float, default=continuation.FEATURE_WEIGHT,
                        help="--continue/--playlist: weight of the songs that a playlist's tags and title words "
                             "co-occur with, added to its song scores (both standardised); 0: song scores alone")
    parser.add_argument("--baseline", choices=["pop", "itemknn", "ease"], default=None,
                        help="--continue/--playlist: songs from this non-neural baseline (baselines.py) fitted on "
                             "the checkpoint's split instead of the model, or without --checkpoint on --dataset's")
    parser.add_argument("--method", choices=blend.METHODS, default=None,
                        help="--continue: answer by this method (blend.py) instead of the one the checkpoint's run "
                             "validated (main.py --recipe arena): its model alone, a neighbour method alone, the "
                             "blend, most popular")
    parser.add_argument("--data_dir", default="data", help="--baseline without --checkpoint: the split's directory")
    parser.add_argument("--dataset", help="--baseline without --checkpoint: the split's name")
    args = parser.parse_args()
    if args.continue_ is not None and not args.out:
        parser.error("--continue needs --out results.json")
    for flag in ("out", "answers"):
        if getattr(args, flag) and args.continue_ is None:
            parser.error(f"--{flag} goes with --continue")
    if args.checkpoint is None and not (args.baseline and args.dataset and (args.continue_ or args.playlist)):
        parser.error("--checkpoint is required (or --baseline NAME --dataset NAME with --continue or --playlist)")
    device = resolve_device(args.gpu)
    if args.checkpoint is None:
        data = dataloader.load(args.data_dir, args.dataset, device)
        if args.continue_ is not None:
            return continue_questions(None, data, args.data_dir, args)
        return print_playlists(None, data, args.data_dir, args, 10 if args.k is None else args.k)
    checkpoint = load_checkpoint(args.checkpoint, device)
    config = checkpoint["config"]
    k = config["topk"] if args.k is None else args.k
    if k < 1:
        parser.error("--k must be at least 1")
    data = dataloader.load(config["data_dir"], config["dataset"], device)
    changed = split_changes(checkpoint, config["data_dir"], config["dataset"])
    if changed:
        print(f"warning: {changed[0]} has changed since {args.checkpoint} was trained on it: the scores are for "
              f"other data", file=sys.stderr)
    model = model_from_checkpoint(checkpoint, data)
    if args.recommend is not None:
        return print_recommendations(model, data, args.recommend, k)
    if args.similar is not None:
        return print_similar(model, data, args.similar, k)
    if args.continue_ is not None:
        method = chosen_method(checkpoint, args)
        if method is not None:
            return continue_by_method(model, data, config["data_dir"], method, args)
        return continue_questions(model, data, config["data_dir"], args)
    if args.playlist is not None:
        return print_playlists(model, data, config["data_dir"], args, k)
    candidates = data.test if args.split == "test" else data.val
    if candidates is None:
        raise InputError(f"--split val: data set {data.name!r} has no validation split (split.py --val)")
    hr, ndcg = score(model, data, candidates, k, args.eval)
    print(f"{args.checkpoint} (epoch {checkpoint['epoch']}, {args.eval} {args.split}): "
          f"HR@{k} {hr:.4f} NDCG@{k} {ndcg:.4f}")


if __name__ == "__main__":
    run_cli(main)
