"""Nothing lost, nothing silent: a resumed run writes only where its last.pt is (or --save_dir), outputs are checked
before the work and never replace what the user did not name, and every bad input any command-line entry point is
given ends in one line on stderr and exit status 2, with no traceback and the files already there untouched.

The cases are a floor: add each new bad input found to BAD_INPUTS (or a test of its own where it needs one)."""
import json
import os
import shutil
import stat

import pytest

import split
import synthetic
from conftest import TINY, TRAINED_EPOCHS, run_script
from test_runs import files_of  # wandb's files aside: its service may still flush trained_run's logs
import utils
from utils import atomic_open, one_line

BIG_ID = 2 ** 63


def null_device(directory):
    """A character device to write to: a /dev/null of its own in `directory` (made as root), else /dev/null itself
    (without the right to make one, the test cannot replace /dev/null either)."""
    device = os.path.join(directory, "null")
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except OSError:
        device = "/dev/null"
    if not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip(f"{device} is not a character device here")
    return device


def one_line_error(done, *named):
    """The one error line of a command that ended with exit status 2 and no traceback; each of `named` in it."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    for text in named:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def write_json(path, value):
    """`value` as JSON in `path` (a string as it is: JSON text)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(value) if isinstance(value, str) else json.dump(value, f)
    return str(path)


@pytest.fixture(scope="module")
def melon(tmp_path_factory):
    """A small synthetic Melon train.json with song_meta.json beside it, and its playlists."""
    root = tmp_path_factory.mktemp("melon")
    train_json, _ = synthetic.generate(str(root / "raw"), playlists=300, songs=500, seed=5)
    with open(train_json, encoding="utf-8") as f:
        return train_json, json.load(f)


# --- a resumed run writes only where its last.pt is ---

def test_resuming_a_copied_run_writes_only_into_the_copy(trained_run, tmp_path):
    original = trained_run[0]
    before = files_of(original)
    copy = str(tmp_path / "copy")
    shutil.copytree(original, copy)
    done = run_script("main.py", "--resume", os.path.join(copy, "last.pt"), "--epochs", TRAINED_EPOCHS + 1,
                      "--wandb", "disabled")
    assert done.returncode == 0, done.stderr
    assert f"writing into {copy}" in done.stdout and "a new wandb run" in done.stdout
    assert files_of(original) == before
    with open(os.path.join(copy, "results.json")) as f:
        assert len(json.load(f)["history"]) == TRAINED_EPOCHS + 1


def test_resume_with_save_dir_writes_there_and_says_so(trained_run, tmp_path):
    original = trained_run[0]
    before = files_of(original)
    elsewhere = str(tmp_path / "elsewhere")
    done = run_script("main.py", "--resume", os.path.join(original, "last.pt"), "--epochs", TRAINED_EPOCHS + 1,
                      "--wandb", "disabled", "--save_dir", elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"writing into {elsewhere} (--save_dir)" in done.stdout
    assert files_of(original) == before
    assert {"best.pt", "last.pt", "results.json", "results.md"} <= set(os.listdir(elsewhere))
    again = run_script("main.py", "--resume", os.path.join(original, "last.pt"), "--epochs", TRAINED_EPOCHS + 1,
                       "--wandb", "disabled", "--save_dir", elsewhere)
    one_line_error(again, "--save_dir", "earlier run")  # a directory holding a run is not replaced by a resume
    assert files_of(original) == before


def test_a_killed_runs_temporary_files_are_removed_on_the_next_start(trained_run, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(trained_run[0], copy)
    stale = [os.path.join(copy, name) for name in (".last.pt.4194999999.a1b2c3.tmp", ".results.json.x8k2_q9z.tmp")]
    for path in stale:
        with open(path, "wb") as f:
            f.write(b"partial")
    done = run_script("main.py", "--resume", os.path.join(copy, "last.pt"), "--epochs", TRAINED_EPOCHS,
                      "--wandb", "disabled")
    assert done.returncode == 0, done.stderr
    assert not any(os.path.exists(path) for path in stale)


# --- outputs: checked up front, written atomically or through, never replacing what was not named ---

def test_check_output_refuses_directories_kernel_files_and_inputs(tmp_path):
    question = write_json(tmp_path / "q.json", [])
    for path, said in ((tmp_path, "a directory"), ("/proc/self/status", "under /proc"), ("/sys/kernel/x", "under /sys"),
                       (question, "the same file as --continue")):
        with pytest.raises(Exception) as caught:
            utils.check_output(str(path), "--out", [("--continue", question)])
        assert said in str(caught.value) and str(path) in str(caught.value)
    link = tmp_path / "link.json"
    link.symlink_to(question)
    with pytest.raises(Exception, match="the same file as --continue"):
        utils.check_output(str(link), "--out", [("--continue", question)])


def test_a_symlinked_output_is_written_through_and_a_device_stays_a_device(tmp_path):
    target = tmp_path / "real" / "results.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    with atomic_open(utils.check_output(str(link), "--out")) as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    assert not [name for name in os.listdir(target.parent) if name.endswith(".tmp")]
    device = null_device(tmp_path)
    with atomic_open(utils.check_output(device, "--out")) as f:
        f.write("nothing")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert utils.check_output(str(fifo), "--out") == str(fifo)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(utils.check_output(str(out), "--out")) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_an_output_written_by_another_process_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "results.json"
    path = utils.check_output(str(out), "--out")
    out.write_text("the other run's")  # another run on the same --out finished first
    with pytest.raises(Exception, match="written by another process"):
        with atomic_open(path) as f:
            f.write("mine")
    assert out.read_text() == "the other run's" and os.listdir(tmp_path) == ["results.json"]


# --- split.py ---

def test_split_exclude_matching_no_playlist_is_refused(melon, tmp_path):
    train_json, playlists = melon
    stranger = write_json(tmp_path / "other.json", [{"id": 10 ** 9, "songs": [], "tags": []}])
    done = run_script("split.py", "--input", train_json, "--exclude", stranger, "--out_dir", tmp_path / "data")
    one_line_error(done, f"--exclude {stranger}", "1 playlist id ", "nothing")
    assert not os.path.exists(tmp_path / "data")


def test_split_exclude_reports_how_many_it_left_out(melon, tmp_path):
    train_json, playlists = melon
    some = write_json(tmp_path / "some.json", playlists[:7] + [{"id": 10 ** 9, "songs": [], "tags": []}])
    done = run_script("split.py", "--input", train_json, "--exclude", some, "--out_dir", tmp_path / "data",
                      "--min_item_count", 2)
    assert done.returncode == 0, done.stderr
    assert f"excluded   7 playlists of {some}" in done.stdout
    with open(tmp_path / "data" / "raw.meta.json") as f:
        meta = json.load(f)
    assert meta["stats"]["excluded_playlists"] == 7 and meta["stats"]["raw_users"] == len(playlists) - 7


def test_split_exclude_of_the_question_file_is_refused(melon, tmp_path):
    train_json, playlists = melon
    questions = write_json(tmp_path / "q.json", [dict(p, id=p["id"] + 10 ** 6) for p in playlists[:5]])
    done = run_script("split.py", "--input", train_json, "--questions", questions, "--exclude", questions,
                      "--out_dir", tmp_path / "data")
    one_line_error(done, f"--exclude {questions}", "--questions")


def test_split_summary_counts_in_whole_words(tmp_path):
    ratings = tmp_path / "r.csv"
    ratings.write_text("1,1\n1,2\n2,3\n2,4\n")
    done = run_script("split.py", "--input", ratings, "--out_dir", tmp_path / "data", "--num_test_neg", 1)
    assert done.returncode == 0, done.stderr
    assert "1 negative each" in done.stdout and "1 negatives" not in done.stdout


# --- messages ---

def test_long_messages_are_cut_at_a_word():
    line = one_line(ValueError("word " * 60), limit=40)
    assert len(line) <= 40 and line.endswith("word...")


# --- bad inputs: one line, exit status 2, no traceback, nothing touched ---

def deep_json(path, depth=100_000):
    with open(path, "w") as f:
        f.write("[" * depth + "]" * depth)
    return str(path)


def split_with_questions(melon, tmp_path, questions):
    return ["split.py", "--input", melon[0], "--questions", write_json(tmp_path / "q.json", questions),
            "--out_dir", tmp_path / "data"]


def symlink_loop(tmp):
    """A link of a loop of two symbolic links, beside `tmp` (files_of cannot read them)."""
    directory = tmp.parent / f"{tmp.name}-loop"
    directory.mkdir()
    os.symlink(directory / "b", directory / "a")
    os.symlink(directory / "a", directory / "b")
    return directory / "a"


def evaluate_arena(flags):
    """evaluate.py with a checkpoint that need not exist: the bad input must be found before the checkpoint is read."""
    return ["evaluate.py", "--checkpoint", "no-such-checkpoint.pt", "--gpu", "cpu", *flags]


BAD_INPUTS = {  # name: (a function (melon, tmp_path) -> argv, text the error line names)
    "split: a question song id of 2^63": (
        lambda melon, tmp: split_with_questions(melon, tmp, [{"id": 1, "songs": [BIG_ID], "tags": []}]),
        "record 0: 'songs' holds 9223372036854775808"),
    "split: a question playlist id of -2^63 - 1": (
        lambda melon, tmp: split_with_questions(melon, tmp, [{"id": -BIG_ID - 1, "songs": [], "tags": []}]),
        "record 0: 'id'"),
    "split: train.json nested deeper than the recursion limit": (
        lambda melon, tmp: ["split.py", "--input", deep_json(tmp / "train.json"), "--out_dir", tmp / "data"],
        "nested deeper"),
    "split: a question file nested deeper than the recursion limit": (
        lambda melon, tmp: ["split.py", "--input", melon[0], "--questions", deep_json(tmp / "q.json"),
                            "--out_dir", tmp / "data"], "q.json: JSON nested deeper"),
    "split: --out_dir a file": (
        lambda melon, tmp: ["split.py", "--input", melon[0], "--out_dir", write_json(tmp / "file", [])], "file"),
    "synthetic: --out under /proc": (
        lambda melon, tmp: ["synthetic.py", "--out", "/proc/self/x", "--playlists", 10, "--songs", 20], "/proc"),
    "main: --data_dir a file": (
        lambda melon, tmp: ["main.py", "--data_dir", write_json(tmp / "file", []), *TINY], "file"),
    "main: --resume a JSON file": (
        lambda melon, tmp: ["main.py", "--resume", write_json(tmp / "last.pt", {})], "last.pt"),
    "main: --resume nested JSON": (
        lambda melon, tmp: ["main.py", "--resume", deep_json(tmp / "last.pt", 5000)], "last.pt"),
    "baselines: --save_dir a file, before the split is read": (
        lambda melon, tmp: ["baselines.py", "--data_dir", tmp / "none", "--dataset", "x", "--save_dir",
                            write_json(tmp / "file", [])], "file is a file, not a directory"),
    "split: --out_dir holding the --questions file it would write": (
        lambda melon, tmp: ["split.py", "--input", melon[0], "--arena", "--name", "x", "--out_dir", tmp,
                            "--questions", write_json(tmp / "x.questions.json", [{"id": -1, "songs": []}])],
        "the same file as --questions"),
    "baselines: --data_dir missing": (
        lambda melon, tmp: ["baselines.py", "--data_dir", tmp / "none", "--dataset", "x"], "none"),
    "grid: --out_dir a file": (
        lambda melon, tmp: ["grid.py", "--out_dir", write_json(tmp / "file", []), "--data_dir", tmp / "none",
                            "--dataset", "x"], "--out_dir"),
    "reproduce: an unknown experiment": (lambda melon, tmp: ["reproduce.py", "no-such-experiment"], "no-such"),
    "evaluate: --continue []": (lambda melon, tmp: evaluate_arena(["--continue", write_json(tmp / "q.json", []),
                                                                    "--out", tmp / "r.json"]), "no playlists"),
    "evaluate: --playlist []": (lambda melon, tmp: evaluate_arena(["--playlist", write_json(tmp / "q.json", [])]),
                                "no playlists"),
    "evaluate: a question song id of 2^63": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [BIG_ID]}]), "--out", tmp / "r.json"]),
        "record 0: 'songs' holds 9223372036854775808"),
    "evaluate: a playlist id of 2^64": (lambda melon, tmp: evaluate_arena(
        ["--playlist", write_json(tmp / "q.json", [{"id": 2 ** 64, "songs": [1]}])]), "record 0: 'id'"),
    "evaluate: a question file nested deeper than the recursion limit": (lambda melon, tmp: evaluate_arena(
        ["--continue", deep_json(tmp / "q.json"), "--out", tmp / "r.json"]), "nested deeper"),
    "evaluate: --answers nested deeper than the recursion limit": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--answers", deep_json(tmp / "a.json"),
         "--out", tmp / "r.json"]), "a.json: JSON nested deeper"),
    "evaluate: --out a directory": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--out", tmp]), "a directory"),
    "evaluate: --out a loop of symbolic links": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--out", symlink_loop(tmp)]),
        "Too many levels of symbolic links"),
    "evaluate: --out under a file": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--out", tmp / "q.json" / "r.json"]),
        "q.json is a file, not a directory"),
    "evaluate: --checkpoint a directory": (lambda melon, tmp: ["evaluate.py", "--checkpoint", tmp], "a directory"),
    "evaluate: --k beyond 64 bits": (lambda melon, tmp: evaluate_arena(["--k", 10 ** 30]), "--k"),
    "evaluate: --feature_weight nan": (lambda melon, tmp: evaluate_arena(
        ["--playlist", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--feature_weight", "nan"]),
        "--feature_weight"),
    "evaluate: a question's songs an object": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": {"a": 1}}]), "--out", tmp / "r.json"]),
        "'songs' must be a list of integer song ids, found an object"),
    "evaluate: an integer of 5,000 digits": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", "[" + "9" * 5000 + "]"), "--out", tmp / "r.json"]), "q.json"),
    "evaluate: --out a directory's name": (lambda melon, tmp: evaluate_arena(
        ["--continue", write_json(tmp / "q.json", [{"id": 1, "songs": [1]}]), "--out", f"{tmp}/new/"]),
        "a directory's name"),
    "main: --seed beyond 64 bits": (lambda melon, tmp: ["main.py", *TINY, "--seed", 2 ** 70], "--seed"),
    "main: --threads 100,000 (OpenMP crashes)": (lambda melon, tmp: ["main.py", *TINY, "--threads", 100_000],
                                                 "--threads must be at most"),
    "main: --l2 inf": (lambda melon, tmp: ["main.py", *TINY, "--l2", "inf"], "--l2"),
    "synthetic: more playlists than memory holds": (
        lambda melon, tmp: ["synthetic.py", "--playlists", 2 ** 31 - 1, "--out", tmp / "syn"], "of memory"),
    "synthetic: --playlists beyond 64 bits": (
        lambda melon, tmp: ["synthetic.py", "--playlists", 10 ** 20, "--out", tmp / "syn"], "--playlists"),
    "baselines: --threads beyond 1,024": (
        lambda melon, tmp: ["baselines.py", "--threads", 10 ** 12, "--save_dir", tmp / "b"], "--threads"),
    "baselines: --l2 beyond float32": (
        lambda melon, tmp: ["baselines.py", "--model", "ease", "--l2", "1e308", "--save_dir", tmp / "b"], "--l2"),
    "baselines: --shrink nan": (lambda melon, tmp: ["baselines.py", "--shrink", "nan", "--save_dir", tmp / "b"],
                                "--shrink"),
    "split: --num_test_neg beyond a user's unseen items": (
        lambda melon, tmp: ["split.py", "--input", write_json(tmp / "r.csv", "1,1\n1,2\n2,1\n2,2\n2,3\n"),
                            "--num_test_neg", 1, "--out_dir", tmp / "data"], "the 0 items user 2 has not"),
    "bench: a negative --batch_size": (lambda melon, tmp: ["bench.py", "--batch_size", "-1"], "--batch_size"),
    "bench: --json a directory": (lambda melon, tmp: ["bench.py", "--json", tmp], "--json"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_one_line_and_touches_nothing(name, melon, tmp_path):
    make, named = BAD_INPUTS[name]
    argv = make(melon, tmp_path)
    before = files_of(tmp_path)
    raw_before = files_of(os.path.dirname(melon[0]))
    one_line_error(run_script(*argv, cwd=tmp_path), named)
    assert files_of(tmp_path) == before and files_of(os.path.dirname(melon[0])) == raw_before


# --- evaluate.py --continue / --playlist ---

@pytest.fixture(scope="module")
def arena(melon, tmp_path_factory):
    """An Arena split of `melon` in ROOT/data and a NeuMF trained on it for one epoch by main.py run in ROOT with
    --data_dir data (relative, as from a shell): (root, data_dir, checkpoint, meta, the split's known tags)."""
    root = tmp_path_factory.mktemp("arena")
    split.split(melon[0], str(root / "data"), "ar", min_item_count=3, arena=True, verbose=False)
    done = run_script("main.py", "--data_dir", "data", "--dataset", "ar", "--epochs", 1, "--batch_size", 256,
                      "--gpu", "cpu", "--wandb", "disabled", "--save_dir", root / "run", cwd=root)
    assert done.returncode == 0, done.stderr
    with open(root / "data" / "ar.meta.json") as f:
        meta = json.load(f)
    with open(root / "data" / "ar.tags.json") as f:
        tags = sorted({tag for tags in json.load(f)["tags"] for tag in tags})
    return root, root / "data", root / "run" / "best.pt", meta, tags


def evaluate(arena, *flags, cwd=None):
    return run_script("evaluate.py", "--checkpoint", arena[2], "--gpu", "cpu", *flags, cwd=cwd)


def continue_flags(arena, out, answers=True):
    data = arena[1]
    return ["--continue", data / "ar.questions.json", "--out", out] + (
        ["--answers", data / "ar.answers.json"] if answers else [])


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the split is loaded: what is checked before any work must stop the command before it."""
    import dataloader

    def load(*args, **kwargs):
        raise AssertionError("the work started before the inputs were checked")

    monkeypatch.setattr(dataloader, "load", load)


def test_continue_into_a_device_keeps_the_device(arena, tmp_path):
    device = null_device(tmp_path)
    done = evaluate(arena, *continue_flags(arena, device))
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert not [name for name in os.listdir(os.path.dirname(device)) if name.endswith(".tmp")]


def test_continue_through_a_symlink_writes_its_target(arena, tmp_path):
    target = tmp_path / "kept" / "results.json"
    target.parent.mkdir()
    target.write_text("[]")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    done = evaluate(arena, *continue_flags(arena, link))
    assert done.returncode == 0, done.stderr
    questions = json.loads((arena[1] / "ar.questions.json").read_text())
    assert link.is_symlink() and len(json.loads(target.read_text())) == len(questions)


@pytest.mark.parametrize("flag", ["--continue", "--answers", "--checkpoint", "split file"])
def test_continue_out_naming_an_input_is_refused_before_the_work(arena, flag, no_work):
    inputs = {"--continue": arena[1] / "ar.questions.json", "--answers": arena[1] / "ar.answers.json",
              "--checkpoint": arena[2], "split file": arena[1] / "ar.train.rating"}
    before = inputs[flag].read_bytes()
    one_line_error(evaluate(arena, *continue_flags(arena, inputs[flag])), "--out", f"the same file as {flag}")
    assert inputs[flag].read_bytes() == before


def test_bad_answers_are_refused_before_the_work_and_leave_out_alone(arena, tmp_path, no_work):
    out = tmp_path / "results.json"
    out.write_text("an earlier submission")
    answers = json.loads((arena[1] / "ar.answers.json").read_text())
    broken = write_json(tmp_path / "answers.json", [dict(answers[0], songs=[])] + answers[1:])
    one_line_error(evaluate(arena, *continue_flags(arena, out, answers=False), "--answers", broken),
                   broken, f"playlist {answers[0]['id']} has no songs")
    fewer = write_json(tmp_path / "fewer.json", answers[2:] + [dict(answers[0], id=-1)])
    one_line_error(evaluate(arena, *continue_flags(arena, out, answers=False), "--answers", fewer),
                   fewer, "2 questions without an answer", "1 answer to no question")
    assert out.read_text() == "an earlier submission"


@pytest.mark.parametrize("where", ["a directory", "/proc/self/x", "/sys/kernel/results.json"])
def test_continue_out_that_cannot_be_written_is_refused_before_the_work(arena, tmp_path, where, no_work):
    out = tmp_path if where == "a directory" else where
    one_line_error(evaluate(arena, *continue_flags(arena, out)), "--out", str(out))


def test_continue_removes_what_a_killed_run_left_beside_out(arena, tmp_path):
    out = tmp_path / "results.json"
    stale = tmp_path / ".results.json.k2j4_x7q.tmp"  # a write-by-rename killed before the rename
    stale.write_text("[{")
    done = evaluate(arena, *continue_flags(arena, out))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_continue_whose_out_another_run_wrote_meanwhile_does_not_claim_it(arena, tmp_path, monkeypatch):
    import continuation
    out = tmp_path / "results.json"
    answer = continuation.answer_questions

    def answer_while_another_run_finishes(*args, **kwargs):
        out.write_text("the other run's")
        return answer(*args, **kwargs)

    monkeypatch.setattr(continuation, "answer_questions", answer_while_another_run_finishes)
    done = evaluate(arena, *continue_flags(arena, out))
    one_line_error(done, str(out), "another process")
    assert "wrote" not in done.stdout and out.read_text() == "the other run's"


def test_long_work_shows_progress(arena, tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "PROGRESS_SECONDS", 0.0)
    done = evaluate(arena, *continue_flags(arena, tmp_path / "r.json"), "--fold_in", "all")
    assert done.returncode == 0, done.stderr
    assert "fold-in of " in done.stdout and " of 20 steps" in done.stdout
    assert "answering: 0 of " in done.stdout


def test_playlist_with_k_beyond_the_songs_left_lists_fewer_and_never_its_own(arena, tmp_path):
    meta, tags = arena[3], arena[4]
    songs = meta["item_ids"][:-7]
    playlist = write_json(tmp_path / "p.json", [{"id": -1, "songs": songs, "tags": tags[:-3], "plylst_title": ""}])
    done = evaluate(arena, "--playlist", playlist, "--k", 5000)
    assert done.returncode == 0, done.stderr
    assert "top 7 songs not already in it (all that are left)" in done.stdout
    listed = [int(line.split()[1]) for line in done.stdout.splitlines() if line.split()[:1] and
              line.split()[0].isdigit()]
    assert sorted(listed) == sorted(meta["item_ids"][-7:])
    tag_line = next(line for line in done.stdout.splitlines() if line.startswith("tags: "))
    assert set(tag_line[6:].split(", ")) == set(tags[-3:])


def test_continue_counts_only_known_distinct_songs_and_tags_against_the_room_left(arena, tmp_path):
    meta, tags = arena[3], arena[4]
    questions = write_json(tmp_path / "q.json", [
        {"id": -1, "songs": list(range(10 ** 9, 10 ** 9 + 1600)) + meta["item_ids"][:3], "tags": [], "plylst_title": ""},
        {"id": -2, "songs": [], "tags": [tags[0]] * 30 + [f"unknown{i}" for i in range(24)], "plylst_title": ""}])
    done = evaluate(arena, "--continue", questions, "--out", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    full = write_json(tmp_path / "full.json", [{"id": -1, "songs": meta["item_ids"][:3], "tags": []},
                                               {"id": -7, "songs": meta["item_ids"][:-99], "tags": []}])
    one_line_error(evaluate(arena, "--continue", full, "--out", tmp_path / "r2.json"), full, "playlist -7",
                   f"holds {len(meta['item_ids']) - 99:,} of the split's {len(meta['item_ids']):,} songs")
    assert not os.path.exists(tmp_path / "r2.json")


def test_a_checkpoint_finds_its_split_from_anywhere_and_takes_one_given(arena, tmp_path):
    root, data_dir, checkpoint = arena[:3]
    here = evaluate(arena, cwd=root)
    assert here.returncode == 0, here.stderr
    elsewhere = evaluate(arena, cwd=tmp_path)  # main.py was given --data_dir data, relative to root
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.stdout == here.stdout
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(data_dir):
        if name.startswith("ar."):
            shutil.copy(data_dir / name, copy / ("again." + name[3:]))
    given = evaluate(arena, "--data_dir", copy, "--dataset", "again", cwd=tmp_path)
    assert given.returncode == 0 and given.stderr == "", given.stderr
    assert given.stdout.split(": ")[-1] == here.stdout.split(": ")[-1]
    other = tmp_path / "other"
    other.mkdir()
    from conftest import write_split
    write_split(other, "tiny")
    one_line_error(evaluate(arena, "--data_dir", other, "--dataset", "tiny", cwd=tmp_path),
                   f"trained on {arena[3]['num_users']:,} users x {arena[3]['num_items']:,} items, not the 200 x 300")
    one_line_error(evaluate(arena, "--data_dir", tmp_path / "none", cwd=tmp_path), "none")


@pytest.mark.parametrize("flags", [["--seed", 2 ** 63 - 1], ["--topk", 2 ** 62], ["--batch_size", 2 ** 62]])
def test_extreme_but_valid_flags_give_a_result(shared_split, tmp_path, flags):
    done = run_script("main.py", "--data_dir", shared_split[0], *TINY, "--epochs", 1, "--save_dir", tmp_path / "run",
                      *flags)
    assert done.returncode == 0, done.stderr


def test_main_checks_the_arena_files_it_scores_at_the_end_before_training(arena, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(arena[1], data)
    write_json(data / "ar.answers.json", json.loads((data / "ar.answers.json").read_text())[1:])
    meta = json.loads((data / "ar.meta.json").read_text())
    meta["arena"]["answers"] = str(data / "ar.answers.json")  # the copy's (meta.json names them by absolute path)
    write_json(data / "ar.meta.json", meta)
    done = run_script("main.py", "--data_dir", data, "--dataset", "ar", "--epochs", 1, "--gpu", "cpu",
                      "--wandb", "disabled", "--save_dir", tmp_path / "run")
    one_line_error(done, "ar.answers.json", "1 question without an answer")
    assert "epoch 1" not in done.stdout and not os.path.exists(tmp_path / "run")


SPLIT_DAMAGE = {  # name: (split file suffix, new content from the old, text the error line names)
    "an item id beyond 64 bits": ("train.rating", lambda text: f"0\t{2 ** 63}\t1\t0\n" + text, "line 1"),
    "an item index far beyond the items": ("train.rating", lambda text: f"0\t{10 ** 12}\t1\t0\n" + text,
                                           "1,000,000,000,001 items"),
    "meta.json nested too deep": ("meta.json", lambda text: "[" * 50_000 + "]" * 50_000, "nested deeper"),
    "meta.json a list": ("meta.json", lambda text: "[]", "expected a JSON object"),
    "meta.json's item_ids a number": ("meta.json", lambda text: '{"item_ids": 5}', "'item_ids' must be a list"),
    "meta.json's item_ids too few": ("meta.json", lambda text: '{"item_ids": [1, 2]}', "2 item_ids for 300 items"),
}


@pytest.mark.parametrize("damage", SPLIT_DAMAGE)
def test_a_damaged_split_gives_one_line(trained_run, shared_split, tmp_path, damage):
    suffix, change, named = SPLIT_DAMAGE[damage]
    data = tmp_path / "data"
    shutil.copytree(shared_split[0], data)
    path = data / f"tiny.{suffix}"
    path.write_text(change(path.read_text() if path.exists() else ""))
    done = run_script("evaluate.py", "--checkpoint", os.path.join(trained_run[0], "best.pt"), "--gpu", "cpu",
                      "--data_dir", data, "--dataset", "tiny")
    one_line_error(done, named)


CHECKPOINT_DAMAGE = {  # name: (checkpoint -> the damaged one, text the error line names)
    "a tensor of another shape": (lambda c: dict(c, model={k: v[:, :1] if v.dim() == 2 else v
                                                           for k, v in c["model"].items()}),
                                  "its user_gmf.weight is [200, 1], the configuration's model's [200, 8]"),
    "an unknown model": (lambda c: dict(c, config=dict(c["config"], model="nosuch")), "describes no model"),
    "a negative number of layers": (lambda c: dict(c, config=dict(c["config"], num_layers=-1)), "describes no model"),
    "provenance not an object": (lambda c: dict(c, provenance="x"), "not a checkpoint written by main.py"),
    "a model not an object": (lambda c: dict(c, model=[1]), "not a checkpoint written by main.py"),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_gives_one_line(trained_run, tmp_path, damage):
    import torch
    change, named = CHECKPOINT_DAMAGE[damage]
    checkpoint = torch.load(os.path.join(trained_run[0], "best.pt"), weights_only=True)
    torch.save(change(checkpoint), tmp_path / "best.pt")
    one_line_error(run_script("evaluate.py", "--checkpoint", tmp_path / "best.pt", "--gpu", "cpu"), named)


def test_resume_from_another_directory_finds_the_split(arena, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(arena[2].parent, copy)  # main.py ran in arena's root with --data_dir data (relative)
    done = run_script("main.py", "--resume", copy / "last.pt", "--epochs", 2, "--wandb", "disabled", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 2 loss" in done.stdout
