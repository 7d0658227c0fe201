"""Public data sets fetched by name into the split files main.py reads, verified before they take their names.

    python3 datasets.py ml-1m            # the NCF paper's ML-1M files -> data/ml-1m.*    (main.py --dataset ml-1m)
    python3 datasets.py ml-1m --val      # and data/ml-1m_val.*: a training item per user held out for validation
    python3 datasets.py lastfm           # HetRec 2011 Last.fm-2k -> data/lastfm-hetrec2011/, data/lastfm_random.*
    python3 datasets.py melon            # says where to get it (Kakao Arena asks for an account)
    python3 datasets.py ml-1m --base_url file:///path/to/copy/    # another source: a mirror, a local copy

Every file is downloaded to a temporary name beside its destination and renamed into place only once the whole set
has arrived and passed its checks (ML-1M's test files byte for byte by sha256; its training file, of which other
copies renumber a few rare items, by its shape; Last.fm's counts), so a cut or corrupted download never sits under
a final name. Without network the command says in one line where to download the files by hand and where to put
them, and exits with status 2 (within a minute: each connection waits at most TIMEOUT seconds).
"""
import os
import http.client
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np

import split
from dataloader import read_ints, read_ratings
from utils import InputError, Parser, atomic_path, file_sha256, run_cli

TIMEOUT = 20  # seconds a connection or a read may wait
CHUNK = 1 << 20
VAL_SEED = 0  # the validation items of --val


@dataclass
class Source:
    base_url: str  # the directory the files are fetched from
    files: dict  # file name at the source -> its sha256, or None where its shape is checked instead


SOURCES = {  # the NCF paper's own ML-1M files (He et al. 2017, its repository's Data/); HetRec 2011 Last.fm-2k
    "ml-1m": Source("https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/master/Data/",
                    {"ml-1m.train.rating": None,
                     "ml-1m.test.rating": "231ae11eb060b643a8c58c063cd17ffc743b54f569afb073d1abb6cf126b88b5",
                     "ml-1m.test.negative": "127853228a76b7d21c0481e8ef8d00dd009cd5c88670dbdd9e9debfdb9f93de4"}),
    "lastfm": Source("https://files.grouplens.org/datasets/hetrec2011/", {"hetrec2011-lastfm-2k.zip": None}),
}
ML1M_SHAPE = (994_169, 6_040, 3_706)  # ml-1m.train.rating's pairs, users and items (ids 0 .. n - 1)
LASTFM_SHAPE = (92_834, 1_892, 17_632)  # user_artists.dat's rows, distinct users and artists
LASTFM_FILES = ("user_artists.dat", "artists.dat")
LASTFM_DIR = "lastfm-hetrec2011"
LASTFM_SPLIT = "lastfm_random"  # the README's split: a random held-out artist per user
MELON = ("melon: cannot be fetched: the Melon Playlist Dataset needs a free Kakao Arena account "
         "(https://arena.kakao.com/c/8, 'Melon Playlist Continuation'): download train.json and song_meta.json "
         "(genre_gn_all.json for genre names) into {out_dir}/melon/, then run python3 split.py --input "
         "{out_dir}/melon/train.json --out_dir {out_dir} --name melon")


# --- fetching ---

def download(url, path, by_hand):
    """Write what `url` holds to `path`; a one-line InputError when it cannot be reached or arrives cut short
    (`by_hand`: where the file goes when downloaded by hand)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(path, "wb") as f:
            expected = response.headers.get("Content-Length")
            received = 0
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                received += len(block)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise InputError(f"cannot fetch {url} ({reason}): download it by hand into {by_hand}, or give another "
                         f"source with --base_url") from None
    if expected is not None and received != int(expected):
        raise InputError(f"{url}: download cut short ({received:,} of {int(expected):,} bytes): try again, or "
                         f"download it by hand into {by_hand}")


def fetch(source, base_url, out_dir, stack, keep=True):
    """{file name: temporary path} of every file of `source` downloaded from `base_url` into `out_dir`, its sha256
    checked where known. The temporary files are renamed onto their names when `stack` closes without an error
    (`keep`), else removed."""
    paths = {}
    for name, sha256 in source.files.items():
        final = os.path.join(out_dir, name)
        paths[name] = stack.enter_context(atomic_path(final) if keep else scratch(final))
        url = urllib.parse.urljoin(base_url, name)
        print(f"fetching {url}", flush=True)
        download(url, paths[name], final)
        digest = file_sha256(paths[name]) if sha256 is not None else None
        if digest != sha256:
            raise InputError(f"{url}: not the expected file (sha256 {digest[:16]}..., expected {sha256[:16]}...): a "
                             f"corrupted copy or another version; nothing was written")
    return paths


@contextmanager
def scratch(path):
    """A temporary path beside `path`, removed when the block ends."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
    finally:
        os.remove(tmp)


# --- the data sets ---

def check_shape(url, shape, expected):
    """A one-line InputError unless `shape` (pairs, users, items) is `expected`."""
    if shape != expected:
        raise InputError(f"{url}: {shape[0]:,} pairs of {shape[1]:,} users and {shape[2]:,} items, expected "
                         f"{expected[0]:,}, {expected[1]:,} and {expected[2]:,}: a corrupted copy or another "
                         f"version; nothing was written")


def fetch_ml1m(base_url, out_dir):
    """data/ml-1m.{train,test}.rating and ml-1m.test.negative, renamed into place together once the test files have
    passed their sha256 and the training file its shape."""
    with ExitStack() as stack:
        paths = fetch(SOURCES["ml-1m"], base_url, out_dir, stack)
        train_url = urllib.parse.urljoin(base_url, "ml-1m.train.rating")
        try:
            users, items = read_ratings(paths["ml-1m.train.rating"])
        except InputError as e:
            raise InputError(f"{train_url}: not a ratings file ({str(e).split(': ', 1)[-1]}); nothing was "
                             f"written") from None
        check_shape(train_url, (len(users), int(users.max()) + 1, int(items.max()) + 1), ML1M_SHAPE)
    return [os.path.join(out_dir, name) for name in SOURCES["ml-1m"].files]


def fetch_lastfm(base_url, out_dir):
    """data/lastfm-hetrec2011/{user_artists,artists}.dat from the HetRec zip (or, from a file:// --base_url, the
    two files unpacked by hand), checked, then split as the README does (data/lastfm_random.*)."""
    raw_dir = os.path.join(out_dir, LASTFM_DIR)
    os.makedirs(raw_dir, exist_ok=True)
    local = urllib.parse.urlparse(base_url)
    with ExitStack() as stack:
        paths = {name: stack.enter_context(atomic_path(os.path.join(raw_dir, name))) for name in LASTFM_FILES}
        if local.scheme == "file" and os.path.exists(os.path.join(local.path, LASTFM_FILES[0])):
            for name in LASTFM_FILES:
                shutil.copyfile(os.path.join(local.path, name), paths[name])
            where = base_url
        else:
            archive = fetch(SOURCES["lastfm"], base_url, out_dir, stack, keep=False)["hetrec2011-lastfm-2k.zip"]
            where = urllib.parse.urljoin(base_url, "hetrec2011-lastfm-2k.zip")
            unpack(archive, where, paths)
        users, artists = read_user_artists(paths[LASTFM_FILES[0]], where)
        check_shape(where, (len(users), len(np.unique(users)), len(np.unique(artists))), LASTFM_SHAPE)
    split.split(os.path.join(raw_dir, LASTFM_FILES[0]), out_dir, LASTFM_SPLIT, test_item="random")
    return [os.path.join(raw_dir, name) for name in LASTFM_FILES]


def unpack(archive, url, paths):
    """The members of `paths` (by base name) from the zip `archive` (downloaded from `url`) into their paths."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = {os.path.basename(member): member for member in z.namelist()}
            for name, path in paths.items():
                if name not in members:
                    raise InputError(f"{url}: holds no {name}: another version; nothing was written")
                with z.open(members[name]) as f, open(path, "wb") as out:
                    shutil.copyfileobj(f, out)
    except (zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{url}: not a readable zip ({e}): a corrupted or cut download; nothing was written") from None


def read_user_artists(path, where):
    """(users, artists) of user_artists.dat (a header line, then userID<TAB>artistID<TAB>weight)."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            pairs = read_ints(f, usecols=(0, 1))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{where}: user_artists.dat is not userID<TAB>artistID<TAB>weight lines; nothing was "
                         f"written") from None
    if not header.startswith("userID"):
        raise InputError(f"{where}: user_artists.dat starts {header[:40]!r}, not its header; nothing was written")
    return pairs[:, 0], pairs[:, 1]


# --- a validation split of a fetched split ---

def validation_split(out_dir, name, seed=VAL_SEED, negatives=99):
    """NAME_val: NAME's split with one random training item of each user (with at least two) held out as its
    validation item among `negatives` items the user never interacted with (outside its training, validation
    and test items); the test files unchanged. main.py on it chooses the epoch on validation."""
    source = os.path.join(out_dir, name)
    train = read_ints(f"{source}.train.rating")
    users, items = train[:, 0], train[:, 1]
    test_users, test_items = read_ratings(f"{source}.test.rating")
    order = np.argsort(users, kind="stable")
    starts = np.searchsorted(users[order], np.arange(users.max() + 1))
    lengths = np.bincount(users, minlength=len(starts))
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(lengths >= 2)
    picked = order[starts[held] + (rng.random(len(held)) * lengths[held]).astype(np.int64)]
    keep = np.ones(len(users), bool)
    keep[picked] = False
    num_items = max(int(items.max()), int(test_items.max())) + 1
    seen_users = np.concatenate([users, test_users])
    seen_items = np.concatenate([items, test_items])
    drawn = split.sample_test_negatives(seen_users, seen_items, len(starts), num_items, negatives, rng,
                                        np.arange(len(starts)))[held]
    columns = [train[:, k] for k in range(train.shape[1])]
    out = f"{name}_val"
    copy = {f"{out}.{part}": f"{source}.{part}" for part in ("test.rating", "test.negative")}
    files = {f"{out}.train.rating": lambda path: split.write_rows(path, columns, np.flatnonzero(keep)),
             f"{out}.val.rating": lambda path: split.write_rows(path, columns, picked),
             f"{out}.val.negative": lambda path: split.write_negatives(path, users, items, picked, drawn),
             **{target: (lambda path, src=src: shutil.copyfile(src, path)) for target, src in copy.items()}}
    return split.write_all(out_dir, files)


# --- the command line ---

FETCHERS = {"ml-1m": fetch_ml1m, "lastfm": fetch_lastfm}


def build_parser():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=[*FETCHERS, "melon"], help="the data set")
    p.add_argument("--out_dir", default="data", help="where the split files go")
    p.add_argument("--base_url", default=None, help="fetch from this directory URL instead (http://, https:// or "
                   "file://): a mirror or a copy made by hand")
    p.add_argument("--val", action="store_true", help="ml-1m: also write NAME_val, a training item per user held out "
                   "for validation (main.py chooses the epoch on it)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.name == "melon":
        raise InputError(MELON.format(out_dir=args.out_dir))
    if args.val and args.name != "ml-1m":
        raise InputError("--val: only for ml-1m (split.py --val makes a validation split of the others)")
    base_url = args.base_url or SOURCES[args.name].base_url
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    os.makedirs(args.out_dir, exist_ok=True)
    written = FETCHERS[args.name](base_url, args.out_dir)
    if args.val:
        written += validation_split(args.out_dir, "ml-1m")
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    run_cli(main)
