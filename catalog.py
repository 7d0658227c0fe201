"""Names of a split's songs and playlists: original ids, and song, artist, genre and release date from
song_meta.json (Melon; genre names from genre_gn_all.json) or artist names from artists.dat (Last.fm)."""
import os

from utils import MISSING, InputError, read_json


SONG_FIELDS = ("id", "song_name", "artist_name_basket", "song_gn_gnr_basket", "issue_date")


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
