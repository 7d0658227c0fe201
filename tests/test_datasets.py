"""datasets.py: ML-1M and Last.fm fetched from a local HTTP server on 127.0.0.1 (copies of ../shared/data), checked
and renamed into place; a corrupted, cut or unreachable source gives one line and exit status 2 with nothing left
under a final name; Melon says where to get it; --val's validation split."""
import functools
import http.server
import os
import shutil
import socket
import threading
import time
import zipfile

import numpy as np
import pytest

import dataloader
import datasets
from conftest import run_script

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
ML1M = os.path.join(SHARED, "ncf-ml-1m")
LASTFM = os.path.join(SHARED, "lastfm-hetrec2011")
needs_ml1m = pytest.mark.skipif(not os.path.isdir(ML1M), reason="../shared/data/ncf-ml-1m is absent")


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class CutHandler(Handler):
    """Says a file is a million bytes longer than it is."""

    def send_header(self, keyword, value):
        super().send_header(keyword, str(int(value) + 10 ** 6) if keyword == "Content-Length" else value)


@pytest.fixture
def serve():
    """serve(directory, handler=Handler) -> the base URL of an HTTP server on 127.0.0.1 serving `directory`."""
    servers = []

    def start(directory, handler=Handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=directory))
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # poll: shutdown waits one
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(*args):
    return run_script("datasets.py", *args)


def final_files(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith(".")) if os.path.isdir(directory) \
        else []


@needs_ml1m
def test_ml1m_from_a_server_gives_the_files_main_trains_on(serve, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ML1M, source)
    out = tmp_path / "data"
    done = fetch("ml-1m", "--out_dir", out, "--base_url", serve(str(source)), "--val")
    assert done.returncode == 0, done.stderr
    assert final_files(out) == sorted([*datasets.SOURCES["ml-1m"].files] + [
        f"ml-1m_val.{part}" for part in ("train.rating", "test.rating", "test.negative", "val.rating",
                                         "val.negative")])
    assert sorted(os.listdir(out)) == final_files(out)  # no temporary file left
    for name in datasets.SOURCES["ml-1m"].files:
        assert (out / name).read_bytes() == (source / name).read_bytes()
    data = dataloader.load(str(out), "ml-1m")
    assert (data.num_users, data.num_items, len(data.train_users)) == (6040, 3706, 994_169)
    val = dataloader.load(str(out), "ml-1m_val")
    assert len(val.train_users) == 994_169 - 6040 and val.val.items.shape == (6040, 100)
    assert np.array_equal(val.test.items, data.test.items)
    seen = set(zip(data.train_users.tolist(), data.train_items.tolist()))
    held = list(zip(val.val.users.tolist(), val.val.items[:, 0].tolist()))
    assert all(pair in seen for pair in held)  # validation items come from the training items
    negatives = val.val.items[:, 1:]
    assert not any((u, i) in seen for u, row in zip(val.val.users.tolist(), negatives.tolist()) for i in row)
    assert not (negatives == data.test.items[:, :1]).any()  # nor the test item
    main_run = run_script("main.py", "--data_dir", out, "--dataset", "ml-1m_val", "--epochs", "1", "--gpu", "cpu",
                          "--wandb", "disabled", "--model", "mf", "--batch_size", "65536", "--lr", "0.01",
                          "--save_dir", tmp_path / "run")
    assert main_run.returncode == 0, main_run.stderr
    assert "val HR@10" in main_run.stdout


@needs_ml1m
def test_a_corrupted_test_file_gives_one_line_and_leaves_nothing(serve, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ML1M, source)
    with open(source / "ml-1m.test.negative", "r+b") as f:
        f.seek(1000)
        f.write(b"7")
    out = tmp_path / "data"
    done = fetch("ml-1m", "--out_dir", out, "--base_url", serve(str(source)))
    assert done.returncode == 2 and done.stdout.count("fetching") == 3
    assert len(done.stderr.strip().splitlines()) == 1
    assert "ml-1m.test.negative: not the expected file" in done.stderr
    assert os.listdir(out) == []  # not even the files that were fine


def test_a_changed_training_file_fails_its_shape_check(serve, tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    (source / "ml-1m.train.rating").write_text("0\t1\t5\t0\n1\t2\t5\t0\n")
    (source / "ml-1m.test.rating").write_text("0\t3\t5\t0\n")
    (source / "ml-1m.test.negative").write_text("(0,3)\t4\n")
    monkeypatch.setattr(datasets, "SOURCES", {"ml-1m": datasets.Source("", dict.fromkeys(
        ("ml-1m.train.rating", "ml-1m.test.rating", "ml-1m.test.negative")))})
    out = tmp_path / "data"
    done = fetch("ml-1m", "--out_dir", out, "--base_url", serve(str(source)))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "2 pairs of 2 users and 3 items, expected 994,169, 6,040 and 3,706" in done.stderr
    assert final_files(out) == [] and os.listdir(out) == []
    monkeypatch.setattr(datasets, "ML1M_SHAPE", (2, 2, 3))
    assert fetch("ml-1m", "--out_dir", out, "--base_url", serve(str(source))).returncode == 0
    assert final_files(out) == ["ml-1m.test.negative", "ml-1m.test.rating", "ml-1m.train.rating"]


def test_a_cut_download_is_refused(serve, tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    (source / "ml-1m.train.rating").write_text("0\t1\t5\t0\n")
    monkeypatch.setattr(datasets, "SOURCES", {"ml-1m": datasets.Source("", {"ml-1m.train.rating": None})})
    out = tmp_path / "data"
    done = fetch("ml-1m", "--out_dir", out, "--base_url", serve(str(source), CutHandler))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "download cut short" in done.stderr and os.listdir(out) == []


def test_an_unreachable_source_names_the_url_and_where_to_put_the_files(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "data"
    started = time.perf_counter()
    done = fetch("ml-1m", "--out_dir", out, "--base_url", f"http://127.0.0.1:{port}/Data")
    assert time.perf_counter() - started < 60
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"cannot fetch http://127.0.0.1:{port}/Data/ml-1m.train.rating" in done.stderr
    assert f"download it by hand into {out / 'ml-1m.train.rating'}" in done.stderr
    assert os.listdir(out) == []


def test_melon_says_where_to_get_it(tmp_path):
    done = fetch("melon", "--out_dir", tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "arena.kakao.com" in done.stderr and f"{tmp_path}/melon/" in done.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir(LASTFM), reason="../shared/data/lastfm-hetrec2011 is absent")
def test_lastfm_zip_is_unpacked_checked_and_split_as_the_readme_does(serve, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with zipfile.ZipFile(source / "hetrec2011-lastfm-2k.zip", "w") as z:
        for name in datasets.LASTFM_FILES:
            z.write(os.path.join(LASTFM, name), name)
    out = tmp_path / "data"
    done = fetch("lastfm", "--out_dir", out, "--base_url", serve(str(source)))
    assert done.returncode == 0, done.stderr
    for name in datasets.LASTFM_FILES:
        assert (out / datasets.LASTFM_DIR / name).read_bytes() == open(os.path.join(LASTFM, name), "rb").read()
    assert not [name for name in os.listdir(out) if name.endswith(".tmp") or name.startswith(".")]
    data = dataloader.load(str(out), datasets.LASTFM_SPLIT)
    assert (data.num_users, len(data.train_users)) == (1884, 92_834 - 8 - 1884)  # 8 users with one artist dropped
    (source / "hetrec2011-lastfm-2k.zip").write_bytes(b"PK\x03\x04 cut")
    again = fetch("lastfm", "--out_dir", tmp_path / "other", "--base_url", serve(str(source)))
    assert again.returncode == 2 and "not a readable zip" in again.stderr
    assert final_files(tmp_path / "other" / datasets.LASTFM_DIR) == []
