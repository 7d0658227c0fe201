"""Write a synthetic playlist data set in the exact Melon Playlist Dataset (Kakao Arena) schema.

Produces OUT/train.json (playlists: id, plylst_title, tags, songs, like_cnt, updt_date),
OUT/song_meta.json (songs: id, album_id, album_name, artist_id_basket, artist_name_basket,
song_name, song_gn_gnr_basket, song_gn_dtl_gnr_basket, issue_date) and OUT/genre_gn_all.json
(genre and detail-genre code -> Korean name, e.g. "GN0100": "발라드"), with realistic statistics:
lognormal (long-tailed) song popularity, lognormal playlist lengths averaging ~46 songs,
playlists drawn from latent taste clusters (genre, artists, era) so collaborative filtering has
signal, release dates 1970-2020 (a few with 00 month/day, a few unparseable), rare duplicate
songs inside a playlist, Korean and English text. The same seed gives byte-identical files.

    python3 synthetic.py                                     # data/sample: 4,000 playlists x 25,000 songs
    python3 synthetic.py --scale melon --out data/melon_syn  # the real set's size: 115,071 x 707,989
    python3 synthetic.py --val 800                           # also val.json: 800 Arena questions (and answers)

With --val N, N more playlists are drawn and turned into Kakao Arena questions (split.py's arena_questions: the
four kinds in the Arena's proportions), written as OUT/val.json in the official question format, with their
answers in OUT/val_answers.json: the official workflow (split.py --questions val.json, evaluate.py --continue
val.json) runs on the sample.
"""
import json
import os
import time
from contextlib import ExitStack

import numpy as np

from arena import PLAYLIST_FIELDS, arena_questions
from utils import MISSING, InputError, Parser, atomic_open, free_ram, human_bytes, run_cli

# (playlists, songs). The sample keeps Melon's ~7.5 playlist entries per song, so its >=25 filter
# leaves ~3,700 playlists x ~1,900 songs (~105k interactions); melon leaves ~106k x ~33k.
SCALES = {"sample": (4_000, 25_000), "melon": (115_071, 707_989)}
SONGS_PER_CLUSTER = 1_500
POPULARITY_SIGMA = 2.75          # lognormal song popularity
LENGTH_MU, LENGTH_SIGMA = 3.40, 1.0  # lognormal playlist length, clipped to [1, 200]: mean ~46
MAX_LENGTH = 200
MIX = (0.65, 0.20)               # shares drawn from a playlist's main / second cluster; the rest: whole catalogue
MAX_SHARE = 0.02                 # cap on a song's expected share of playlists (the real set's top song: ~1.9%)
DEEP_CUTS = (0.3, 3.0)           # beta: each playlist's share of "deep cuts", drawn uniformly from
DEEP_TAIL = 0.9                  # the least popular 90% of songs
NICHE = 0.07                     # playlists made only of deep cuts (the real set's filter drops ~9% of playlists)
DRAW_ROUNDS = 5
FIRST_DAY, LAST_DAY = (np.datetime64(d).astype(np.int64) for d in ("1970-01-01", "2020-04-23"))  # days since epoch
ERA_YEARS = 15                   # mean gap between a cluster's era and LAST_DAY
RECENCY_YEARS = 25               # popularity falls by e every RECENCY_YEARS before LAST_DAY
CHUNK = 20_000                   # records per json.dumps call

# (Melon code number, Korean tag, English name, mostly foreign artists)
GENRES = [
    (1, "발라드", "Ballad", False), (2, "댄스", "Dance", False), (3, "힙합", "Hip-hop", False),
    (4, "알앤비", "R&B", False), (5, "인디", "Indie", False), (6, "락", "Rock", False),
    (7, "트로트", "Trot", False), (8, "포크", "Folk", False), (9, "팝", "Pop", True),
    (10, "메탈", "Metal", True), (11, "일렉트로니카", "Electronica", True), (12, "외힙", "Rap", True),
    (13, "소울", "Soul", True), (14, "컨트리", "Country", True), (15, "OST", "OST", False),
    (16, "클래식", "Classical", True), (17, "재즈", "Jazz", True), (18, "뉴에이지", "New Age", False),
    (19, "제이팝", "J-Pop", True), (20, "월드뮤직", "World", True), (21, "CCM", "CCM", False),
    (22, "태교", "Lullaby", False), (23, "찬양", "Gospel", False), (24, "국악", "Gugak", False),
    (25, "아이돌", "K-Pop", False), (26, "EDM", "EDM", False), (27, "뮤지컬", "Musical", False),
    (28, "동요", "Kids", False), (29, "게임", "Game", False), (30, "매장음악", "Lounge", False),
]
# Names of the detail genres GNxx01..GNxx09 under every genre GNxx00, as in the real genre_gn_all.json.
DETAIL_NAMES = ["세부장르전체", "'80", "'90", "'00", "'10-", "국내", "해외", "인디", "리메이크"]
KO_WORDS = ["사랑", "이별", "하루", "밤", "별", "바람", "꿈", "너", "우리", "봄", "여름", "가을", "겨울",
            "눈물", "기억", "그대", "시간", "노래", "하늘", "바다", "새벽", "거리", "비", "햇살", "마음",
            "추억", "약속", "첫사랑", "편지", "고백"]
EN_WORDS = ["Love", "Night", "Dream", "Summer", "Blue", "Heart", "Light", "Rain", "Star", "Road", "Fire",
            "Home", "Moon", "Stay", "Forever", "Wild", "Gold", "Paradise", "Lonely", "Shine", "Midnight",
            "City", "Ocean", "Falling", "Young", "Sweet", "Memories", "Tonight", "Alive", "Spring"]
KO_FAMILY = list("김이박최정강조윤장임한오서신권황안송류홍")
KO_GIVEN = ["민지", "서연", "지훈", "현우", "수빈", "하늘", "도윤", "예린", "태양", "지아", "준호", "유나",
            "승민", "다은", "재원", "소희", "은비", "성훈", "혜진", "우진"]
ALBUM_SUFFIXES = ["", "", "", " 1집", " 2집", " - EP", " (Deluxe Edition)", " OST Part.1", " Remastered",
                  " The 1st Mini Album"]
MOOD_TAGS = ["기분전환", "감성", "휴식", "잔잔한", "드라이브", "힐링", "사랑", "새벽", "밤", "카페", "이별",
             "운동", "여름", "겨울", "추억", "설렘", "신나는", "집중", "우울", "퇴근길"]
KO_MOODS = ["새벽에 듣는", "잔잔한", "신나는", "감성", "드라이브할 때", "카페에서 듣는", "비 오는 날",
            "운동할 때", "퇴근길", "공부할 때 듣는", "설레는", "추억의"]
EN_MOODS = ["Late Night", "Chill", "Feel Good", "Rainy Day", "Workout", "Morning", "Sunset", "Cozy"]
KO_TITLE_ENDS = ["", " 모음", " 플레이리스트", " 노래", " BEST", " ♥", " 🎧"]
EN_TITLE_ENDS = [" Mix", " Vibes", " Playlist", ""]


def pool(*parts):
    """Object array of every concatenation of one string from each part."""
    out = np.array([""], dtype=object)
    for part in parts:
        out = (out[:, None] + np.array(part, dtype=object)[None, :]).ravel()
    return out


KO_PHRASES = np.concatenate([pool(KO_WORDS), pool(KO_WORDS, [" "], KO_WORDS)])
EN_PHRASES = np.concatenate([pool(EN_WORDS), pool(EN_WORDS, [" "], EN_WORDS)])
KO_NAMES = pool(KO_FAMILY, KO_GIVEN)
EN_NAMES = np.concatenate([pool(["The "], EN_WORDS, ["s"]), pool(EN_WORDS, [" "], EN_WORDS)])


def pick(rng, strings, n):
    """n strings drawn uniformly from `strings`, as an object array."""
    return np.asarray(strings, dtype=object)[rng.integers(len(strings), size=n)]


def text(rng, english, ko, en):
    """For each flag in `english`, a random string from the English or the Korean pool."""
    return np.where(english, pick(rng, en, len(english)), pick(rng, ko, len(english)))


def sparse_ids(rng, n, spread):
    """n distinct ids spread over [0, n * spread), in random order."""
    return rng.permutation(int(n * spread) + 1)[:n]


def yyyymmdd(days):
    """datetime64[D] array -> int array YYYYMMDD."""
    months = days.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (days - months).astype(np.int64) + 1
    return year * 10_000 + month * 100 + day


def issue_dates(rng, day):
    """YYYYMMDD release dates of songs released on `day` (days since 1970), with the real file's oddities: some
    with 00 day, some with 00 month and day, a few unusable (0, or a 13th month)."""
    date = yyyymmdd(day.astype("datetime64[D]"))
    odd = rng.random(len(day))
    date = np.where(odd < 0.012, date // 100 * 100, date)            # 00 day
    date = np.where(odd > 0.992, date // 10_000 * 10_000, date)      # 00 month and day
    bad = rng.choice(len(day), size=max(1, round(len(day) * 0.001)), replace=False)
    date[bad] = np.where(rng.random(len(bad)) < 0.5, 0, date[bad] // 10_000 * 10_000 + 1399)
    return date


def song_genres(rng, cluster_genre):
    """(genre, second genre, detail) codes of songs whose clusters have the GENRES indices `cluster_genre`: the
    cluster's genre (a few songs none: 0), some a second one, and a detail genre 1-9."""
    num_songs = len(cluster_genre)
    genre = np.array([g[0] for g in GENRES])[cluster_genre]
    genre[rng.random(num_songs) < 0.005] = 0  # 0: no genre
    genre2 = np.where(rng.random(num_songs) < 0.15, rng.integers(1, len(GENRES) + 1, size=num_songs), 0)
    genre2[(genre2 == genre) | (genre == 0)] = 0
    return genre, genre2, rng.integers(1, 10, size=num_songs)


def make_catalogue(rng, num_songs):
    """Songs grouped into albums, artists and taste clusters; returns a dict of per-song arrays and lists."""
    num_clusters = max(1, round(num_songs / SONGS_PER_CLUSTER))
    num_artists, num_albums = max(1, num_songs // 8), max(1, num_songs // 4)

    genre_p = 1.0 / np.arange(1, len(GENRES) + 1) ** 0.7
    cluster_genre = rng.choice(len(GENRES), size=num_clusters, p=genre_p / genre_p.sum())
    # Eras lean recent: a cluster's centre is the data set's end minus an exponential gap.
    cluster_era = LAST_DAY - rng.exponential(ERA_YEARS * 365.25, num_clusters) % (LAST_DAY - FIRST_DAY)
    foreign = np.array([g[3] for g in GENRES])[cluster_genre]

    artist_cluster = rng.integers(num_clusters, size=num_artists)
    artist_english = rng.random(num_artists) < np.where(foreign[artist_cluster], 0.9, 0.15)
    artist_ids = np.sort(sparse_ids(rng, num_artists, 9.0))
    artist_names = text(rng, artist_english, KO_NAMES, EN_NAMES)

    album_artist = rng.integers(num_artists, size=num_albums)
    album_ids = np.sort(sparse_ids(rng, num_albums, 11.0))
    album_english = artist_english[album_artist]
    album_names = text(rng, album_english, KO_PHRASES, EN_PHRASES) + pick(rng, ALBUM_SUFFIXES, num_albums)
    album_day = cluster_era[artist_cluster[album_artist]] + rng.normal(0, 5 * 365.25, num_albums)
    album_day = LAST_DAY - np.abs(LAST_DAY - FIRST_DAY - np.abs(album_day - FIRST_DAY))  # reflected into range
    album_day = album_day.astype(np.int64)

    album = rng.integers(num_albums, size=num_songs)
    artist = album_artist[album]
    cluster = artist_cluster[artist]
    english = artist_english[artist]

    featured = np.where(rng.random(num_songs) < 0.08, rng.integers(num_artists, size=num_songs), -1)
    featured[featured == artist] = -1
    song_names = text(rng, english, KO_PHRASES, EN_PHRASES)
    feat = np.flatnonzero((featured >= 0) & (rng.random(num_songs) < 0.4))
    song_names[feat] = song_names[feat] + " (Feat. " + artist_names[featured[feat]] + ")"

    day = album_day[album]
    date = issue_dates(rng, day)
    genre, genre2, detail = song_genres(rng, cluster_genre[cluster])
    # Code tables whose entry 0 (genre) or -1 (artist) is None: "absent" in a basket.
    gnr = np.array([None] + [f"GN{g:02d}00" for g in range(1, len(GENRES) + 1)], dtype=object)
    dtl = np.array([[None] * 10] + [[f"GN{g:02d}{d:02d}" for d in range(10)] for g in range(1, len(GENRES) + 1)],
                   dtype=object)
    artist_id = np.append(artist_ids.astype(object), None)
    artist_name = np.append(artist_names, None)

    def baskets(first, second):
        return [[] if a is None else [a] if b is None else [a, b] for a, b in zip(first.tolist(), second.tolist())]

    meta = {  # song_meta.json's columns, in the real file's key order
        "song_gn_dtl_gnr_basket": baskets(dtl[genre, detail], dtl[genre2, detail]),
        "issue_date": [f"{d:08d}" for d in date.tolist()],
        "album_name": album_names[album].tolist(),
        "album_id": album_ids[album].tolist(),
        "artist_id_basket": baskets(artist_id[artist], artist_id[featured]),
        "song_name": song_names.tolist(),
        "song_gn_gnr_basket": baskets(gnr[genre], gnr[genre2]),
        "artist_name_basket": baskets(artist_name[artist], artist_name[featured]),
        "id": list(range(num_songs)),
    }
    return {"cluster": cluster, "num_clusters": num_clusters, "cluster_genre": cluster_genre, "day": day, "meta": meta}


def song_records(meta, start, stop):
    """song_meta.json records for song ids start..stop-1."""
    return [dict(zip(meta, row)) for row in zip(*(column[start:stop] for column in meta.values()))]


def draw_songs(rng, lengths, cluster, num_clusters, weight):
    """Song lists for playlists of the given lengths, as (flat song array, offsets), playlist-major.

    Each playlist has a main and a second taste cluster; each entry comes from one of them, or from
    the whole catalogue, in proportion to song popularity, or is a deep cut (a uniformly drawn
    unpopular song). Songs are distinct within a playlist except that ~1% of playlists repeat one
    song, as in the real set.
    """
    num_playlists, num_songs = len(lengths), len(weight)
    order = np.argsort(cluster, kind="stable")
    cum = np.cumsum(weight[order])
    ends = np.searchsorted(cluster[order], np.arange(num_clusters), side="right")
    bounds = np.concatenate([[0.0], cum])
    lo, hi = bounds[np.concatenate([[0], ends[:-1]])], bounds[ends]
    cluster_p = (hi - lo) / cum[-1]
    main, second = (rng.choice(num_clusters, size=num_playlists, p=cluster_p) for _ in range(2))

    deep_share = np.where(rng.random(num_playlists) < NICHE, 1.0, rng.beta(*DEEP_CUTS, num_playlists))
    tail = np.argsort(weight)[:max(1, int(num_songs * DEEP_TAIL))]

    def sample(playlist):
        r = rng.random(len(playlist))
        chosen = np.where(r < MIX[0], main[playlist], second[playlist])
        whole = r >= MIX[0] + MIX[1]
        u = lo[chosen] + rng.random(len(playlist)) * (hi[chosen] - lo[chosen])
        u[whole] = rng.random(whole.sum()) * cum[-1]
        song = order[np.minimum(np.searchsorted(cum, u, side="right"), np.where(whole, num_songs, ends[chosen]) - 1)]
        deep = rng.random(len(playlist)) < deep_share[playlist]
        song[deep] = tail[rng.integers(len(tail), size=deep.sum())]
        return song

    # Oversample, keep each playlist's first `length` distinct songs, top up the ones left short.
    playlist = song = np.empty(0, dtype=np.int64)
    need = lengths
    for _ in range(DRAW_ROUNDS):
        extra = np.repeat(np.arange(num_playlists), np.where(need > 0, need + need // 2 + 10, 0))
        playlist, song = np.concatenate([playlist, extra]), np.concatenate([song, sample(extra)])
        _, first = np.unique(playlist * np.int64(num_songs) + song, return_index=True)
        first.sort()
        first = first[np.argsort(playlist[first], kind="stable")]
        playlist, song = playlist[first], song[first]
        starts = np.searchsorted(playlist, np.arange(num_playlists))
        keep = np.arange(len(playlist)) - starts[playlist] < lengths[playlist]
        playlist, song = playlist[keep], song[keep]
        need = lengths - np.bincount(playlist, minlength=num_playlists)
        if not need.any():
            break
    offsets = np.concatenate([[0], np.cumsum(lengths - need)])

    sizes = np.diff(offsets)
    repeat = np.flatnonzero((rng.random(num_playlists) < 0.01) & (sizes >= 2))
    song[offsets[repeat + 1] - 1] = song[offsets[repeat] + rng.integers(0, sizes[repeat] - 1)]
    return song, offsets, main


def make_playlists(rng, num_playlists, cat):
    """Per-playlist arrays and lists: ids, titles, tags, song lists (flat + offsets), likes, dates."""
    num_songs = len(cat["cluster"])
    lengths = rng.lognormal(LENGTH_MU, LENGTH_SIGMA, num_playlists)
    lengths = np.clip(np.rint(lengths), 1, min(MAX_LENGTH, num_songs)).astype(np.int64)
    weight = rng.lognormal(0.0, POPULARITY_SIGMA, num_songs)
    weight *= np.exp((cat["day"] - LAST_DAY) / (RECENCY_YEARS * 365.25))
    popular_entries = lengths.sum() * (1 - NICHE) * (1 - DEEP_CUTS[0] / sum(DEEP_CUTS))
    for _ in range(3):  # capping lowers the total, so cap again
        weight = np.minimum(weight, weight.sum() * MAX_SHARE * num_playlists / popular_entries)
    songs, offsets, main = draw_songs(rng, lengths, cat["cluster"], cat["num_clusters"], weight)

    genre = cat["cluster_genre"][main]
    ko_genre = np.array([g[1] for g in GENRES], dtype=object)[genre]
    en_genre = np.array([g[2] for g in GENRES], dtype=object)[genre]
    titles = np.where(
        rng.random(num_playlists) < 0.2,
        pick(rng, EN_MOODS, num_playlists) + " " + en_genre + pick(rng, EN_TITLE_ENDS, num_playlists),
        pick(rng, KO_MOODS, num_playlists) + " " + ko_genre + pick(rng, KO_TITLE_ENDS, num_playlists))

    num_tags = np.clip(rng.poisson(3.0, num_playlists) + 1, 1, 10)
    moods = pick(rng, MOOD_TAGS, (num_playlists, 9)).tolist()
    ko_genre = ko_genre.tolist()
    tags = [list(dict.fromkeys([g] + m[:n - 1])) for g, m, n in zip(ko_genre, moods, num_tags.tolist())]

    # More recent updates are more common; a playlist is updated after its newest song's release.
    start, end = np.datetime64("2005-01-01T00:00:00").astype(np.int64), (LAST_DAY + 1) * 86_400 - 1
    updated = start + ((end - start) * rng.random(num_playlists) ** 0.3).astype(np.int64)
    newest = np.maximum.reduceat(cat["day"][songs], offsets[:-1]) * 86_400
    updated = np.minimum(np.maximum(updated, newest + rng.integers(30 * 86_400, size=num_playlists)), end)
    updated = updated.astype("datetime64[s]")
    return {
        "id": sparse_ids(rng, num_playlists, 4 / 3).tolist(),
        "title": titles.tolist(), "tags": tags,
        "songs": songs, "offsets": offsets,
        "like_cnt": np.floor(rng.lognormal(1.5, 2.0, num_playlists)).astype(np.int64).tolist(),
        "updt_date": [f"{d[:10]} {d[11:]}.000" for d in np.datetime_as_string(updated, unit="s").tolist()],
    }


def playlist_records(pls, start, stop):
    """train.json records for playlists start..stop-1, keys in the real file's order."""
    off = pls["offsets"]
    songs = pls["songs"][off[start]:off[stop]].tolist()
    base = off[start]
    return [{
        "tags": pls["tags"][i],
        "id": pls["id"][i],
        "plylst_title": pls["title"][i],
        "songs": songs[off[i] - base:off[i + 1] - base],
        "like_cnt": pls["like_cnt"][i],
        "updt_date": pls["updt_date"][i],
    } for i in range(start, stop)]


def write_json_list(f, count, records):
    """Write a JSON list of `count` records to file `f`, built and encoded CHUNK at a time.

    The bytes equal json.dump(whole_list, f, ensure_ascii=False); json.dumps per chunk uses the
    C encoder (json.dump does not) and never holds every record in memory at once.
    """
    f.write("[")
    for start in range(0, count, CHUNK):
        if start:
            f.write(", ")
        f.write(json.dumps(records(start, min(start + CHUNK, count)), ensure_ascii=False)[1:-1])
    f.write("]")


def genre_names():
    """genre_gn_all.json's content: {"GN0100": "발라드", "GN0101": "세부장르전체", ...}, codes in ascending order."""
    names = {}
    for number, korean, _, _ in GENRES:
        names[f"GN{number:02d}00"] = korean
        names.update({f"GN{number:02d}{d:02d}": detail for d, detail in enumerate(DETAIL_NAMES, 1)})
    return names


def resolve_sizes(scale, playlists, songs, seed):
    """Validated (playlists, songs): the scale's sizes unless given."""
    if scale not in SCALES:
        raise InputError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    num_playlists = SCALES[scale][0] if playlists is None else playlists
    num_songs = SCALES[scale][1] if songs is None else songs
    for flag, value in (("--playlists", num_playlists), ("--songs", num_songs)):
        if value < 1:
            raise InputError(f"{flag} must be a positive integer, got {value}")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    return num_playlists, num_songs


def check_memory(num_playlists, num_songs):
    """A one-line error before any work when the set would take more memory than is free (about 8 KB a playlist and
    1 KB a song at the peak, measured at 40,000 x 250,000: 0.45 GB)."""
    needed, free = 8_000 * num_playlists + 1_000 * num_songs, free_ram()
    if free is not None and needed > free:
        raise InputError(f"--playlists {num_playlists:,} --songs {num_songs:,}: about {human_bytes(needed)} of "
                         f"memory, more than the {human_bytes(free)} free")


def write_dataset(out_dir, num_playlists, num_songs, seed, num_questions=0):
    """Generate and write the three files (and val.json, val_answers.json: `num_questions` Arena questions);
    return (train path, song_meta path, number of playlist entries).

    None of them replaces an old one until all are completely written.
    """
    check_memory(num_playlists + num_questions, num_songs)
    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng, num_songs)
    pls = make_playlists(rng, num_playlists + num_questions, cat)
    train_path = os.path.join(out_dir, "train.json")
    meta_path = os.path.join(out_dir, "song_meta.json")
    try:
        with ExitStack() as files:
            train, meta, genres = (files.enter_context(atomic_open(os.path.join(out_dir, name), "w", encoding="utf-8"))
                                   for name in ("train.json", "song_meta.json", "genre_gn_all.json"))
            write_json_list(train, num_playlists, lambda a, b: playlist_records(pls, a, b))
            write_json_list(meta, num_songs, lambda a, b: song_records(cat["meta"], a, b))
            json.dump(genre_names(), genres, ensure_ascii=False)
            if num_questions:
                asked = [tuple(record.get(key, MISSING) for key in PLAYLIST_FIELDS)
                         for record in playlist_records(pls, num_playlists, num_playlists + num_questions)]
                questions, answers, _ = arena_questions(asked, rng)
                for name, records in (("val.json", questions), ("val_answers.json", answers)):
                    json.dump(records, files.enter_context(atomic_open(os.path.join(out_dir, name), "w",
                                                                       encoding="utf-8")), ensure_ascii=False)
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot write: {e.strerror or e}") from None
    return train_path, meta_path, int(pls["offsets"][num_playlists])


def generate(out_dir, scale="sample", playlists=None, songs=None, seed=42, questions=0):
    """Write OUT_DIR/train.json, song_meta.json and genre_gn_all.json (and val.json, val_answers.json with
    `questions`); return the paths (train, song_meta)."""
    train_path, meta_path, _ = write_dataset(out_dir, *resolve_sizes(scale, playlists, songs, seed), seed, questions)
    return train_path, meta_path


def main():
    parser = Parser(description="Write a synthetic data set in the Melon Playlist Dataset schema.")
    parser.add_argument("--out", default=os.path.join("data", "sample"), help="output directory")
    parser.add_argument("--scale", choices=sorted(SCALES), default="sample",
                        help="sample: 4,000 playlists x 25,000 songs; melon: the real set's 115,071 x 707,989")
    parser.add_argument("--playlists", type=int, help="number of playlists (overrides --scale)")
    parser.add_argument("--songs", type=int, help="number of songs (overrides --scale)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val", type=int, default=0, metavar="N",
                        help="also write val.json: N more playlists as Kakao Arena questions (answers in "
                             "val_answers.json)")
    args = parser.parse_args()
    if args.val < 0:
        parser.error(f"--val must not be negative, got {args.val}")

    began = time.perf_counter()
    num_playlists, num_songs = resolve_sizes(args.scale, args.playlists, args.songs, args.seed)
    train_path, meta_path, entries = write_dataset(args.out, num_playlists, num_songs, args.seed, args.val)
    print(f"{num_playlists:,} playlists, {num_songs:,} songs, {entries:,} playlist-song entries "
          f"(mean {entries / num_playlists:.1f} per playlist) in {time.perf_counter() - began:.1f}s")
    print(f"wrote {train_path}, {meta_path} and {os.path.join(args.out, 'genre_gn_all.json')}"
          + (f"; {args.val:,} Arena questions in {os.path.join(args.out, 'val.json')} (answers: val_answers.json)"
             if args.val else ""))


if __name__ == "__main__":
    run_cli(main)
