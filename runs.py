"""A run's files: its save directory (made, claimed and locked), its checkpoints (written atomically, loaded with
one-line errors), what produced it (provenance, split file fingerprints), and whether a saved run is the one a
command line describes.

main.py writes runs; evaluate.py and grid.py read them.
"""
import hashlib
import json
import os
import pickle
import shutil
import time

import torch

import distributed
from model import ModelConfig, build_model
from utils import (InputError, atomic_path, code_provenance, file_sha256, lock_directory, one_line, point_symlink,
                   remove_stale_temporaries)

RUN_FILES = ("results.json", "last.pt", "best.pt")  # a run's outputs, which no other run may replace
SPLIT_SUFFIXES = ("train.rating", "test.rating", "test.negative", "val.rating", "val.negative", "meta.json")
CONFIG_KEYS = {"data_dir", "dataset", "model", "latent_dim_mf", "num_layers", "topk"}  # what loading a model needs
RESUMABLE_FLAGS = ("epochs", "gpu", "threads", "wandb", "log_model", "patience", "resume",
                   "overwrite")  # may differ from the checkpoint's on --resume


# --- is it the same run? ---

def changed_flags(config, args, ignored):
    """The flags (argument names) of `args` whose value differs from a saved configuration's, in `args`' order;
    flags in `ignored`, and those the configuration does not have, aside."""
    return [k for k, v in vars(args).items() if k not in ignored and k in config and config[k] != v]


def same_run(config, args):
    """Whether a saved configuration is the one `args` describes, the flags that may change on --resume aside."""
    return (config.keys() - set(RESUMABLE_FLAGS) == vars(args).keys() - set(RESUMABLE_FLAGS)
            and not changed_flags(config, args, RESUMABLE_FLAGS))


# --- checkpoints ---

def save_checkpoint(path, state):
    """torch.save(state) to `path`, atomically: a reader finds the old checkpoint or the complete new one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def compact(state):
    """`state` (dicts, lists and tuples of tensors and other values) with each tensor replaced by a contiguous copy
    of its own: torch.save writes the whole storage behind a view (the model's weights are views into the training
    step's packed buffers, Adam's moments beside them), so a checkpoint of views would hold every buffer."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(state, dict):
        return {key: compact(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(compact(value) for value in state)
    return state


def load_checkpoint(path, device="cpu"):
    """A checkpoint written by main.py, loaded with weights_only=True; a one-line error if it is missing or corrupt."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise InputError(f"{path}: a directory, not a checkpoint (best.pt or last.pt inside it?)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on other files (KeyError on text, BadZipFile, ...)
        reason = ("not a file written by torch.save" if isinstance(e, (KeyError, pickle.UnpicklingError))
                  else "empty or cut short" if isinstance(e, EOFError)
                  else one_line(e, 120))
        raise InputError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"config", "model", "epoch"} <= checkpoint.keys() \
            or not isinstance(checkpoint["config"], dict) or not CONFIG_KEYS <= checkpoint["config"].keys() \
            or not isinstance(checkpoint["model"], dict) or not isinstance(checkpoint.get("provenance") or {}, dict):
        raise InputError(f"{path}: not a checkpoint written by main.py")
    return checkpoint


def split_of(checkpoint, path, data_dir=None, dataset=None):
    """(data_dir, dataset) of the split to use the checkpoint of `path` on: those given (the model is checked to fit
    them when loaded), else its own: its --data_dir as main.py was given it (relative to where main.py ran) when
    the split is there from here, else the absolute directory its provenance records; a one-line error otherwise."""
    config = checkpoint["config"]
    dataset = dataset or config["dataset"]
    if data_dir is not None:
        return data_dir, dataset
    recorded, absolute = config["data_dir"], (checkpoint.get("provenance") or {}).get("split_dir")
    for candidate in (recorded, absolute):
        if candidate and os.path.exists(os.path.join(candidate, f"{dataset}.train.rating")):
            return candidate, dataset
    also = f" nor in {absolute}, where it was" if absolute else " (the checkpoint predates recording where that was)"
    raise InputError(f"{path}: its split {dataset!r} is not in {recorded} (main.py's --data_dir, relative to where "
                     f"it ran){also}; give --data_dir DIR")


def model_from_checkpoint(checkpoint, data, path="checkpoint"):
    """The model a checkpoint (of `path`) holds, built by its configuration for `data` and on `data`'s device; a
    one-line error when it was trained on another number of users or items."""
    try:
        model = build_model(ModelConfig.of(checkpoint["config"]), data.num_users, data.num_items)
    except (ValueError, TypeError, OverflowError, RuntimeError) as e:
        raise InputError(f"{path}: its configuration describes no model that can be built ({one_line(e)})") from None
    state = checkpoint["model"]
    trained = tuple(next((state[key].shape[0] for key in (f"{side}_gmf.weight", f"{side}_mlp.weight") if key in state),
                         0) for side in ("user", "item"))
    if trained != (data.num_users, data.num_items):
        raise InputError(f"{path}: trained on {trained[0]:,} users x {trained[1]:,} items, not the "
                         f"{data.num_users:,} x {data.num_items:,} of data set {data.name!r}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{path}: does not fit its configuration ({state_mismatch(model, state) or one_line(e)})"
                         ) from None
    return model.to(data.device)


def state_mismatch(model, state):
    """In words, the first tensor of `state` that `model` lacks, or has not, or has in another shape; or None."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            return f"it has no {key}"
        shape = tuple(getattr(state[key], "shape", ()))
        if shape != tuple(tensor.shape):
            return f"its {key} is {list(shape)}, the configuration's model's {list(tensor.shape)}"
    extra = next((key for key in state if key not in own), None)
    return f"its {extra} is not the configuration's model's" if extra else None


def load_pretrained_checkpoints(args, data, device="cpu"):
    """The --pretrain_gmf and --pretrain_mlp checkpoints, each checked to be of its kind and to fit the NeuMF that
    `args` describes on `data` (factor, layers, users and items); a one-line error naming the flag otherwise."""
    checkpoints = []
    for kind in ("gmf", "mlp"):
        flag, path = f"--pretrain_{kind}", getattr(args, f"pretrain_{kind}")
        checkpoint = load_checkpoint(path, device)
        config = checkpoint["config"]
        if config["model"] != kind:
            raise InputError(f"{flag} {path}: a {config['model']} checkpoint, not a {kind} one")
        for name in ("latent_dim_mf", "num_layers") if kind == "mlp" else ("latent_dim_mf",):
            if config[name] != getattr(args, name):
                raise InputError(f"{flag} {path}: trained with --{name} {config[name]}, not {getattr(args, name)}")
        state = checkpoint["model"]
        rows = tuple(state[f"{side}_{kind}.weight"].shape[0] for side in ("user", "item")
                     if f"{side}_{kind}.weight" in state)
        if len(rows) == 2 and rows != (data.num_users, data.num_items):
            raise InputError(f"{flag} {path}: trained on {rows[0]:,} users x {rows[1]:,} items, not the "
                             f"{data.num_users:,} x {data.num_items:,} of data set {data.name!r}")
        checkpoints.append(checkpoint)
    return checkpoints


def restart_point(args, split_files=None):
    """After torchrun restarted the workers: "finished" when SAVE_DIR holds this run's results, the run's last.pt
    checkpoint when there is one to continue, else None. `split_files`: the split's fingerprint(), when known."""
    results_path, last_path = os.path.join(args.save_dir, "results.json"), os.path.join(args.save_dir, "last.pt")
    if os.path.exists(results_path):
        with open(results_path) as f:
            if same_run(json.load(f)["config"], args):
                return "finished"
    if os.path.exists(last_path):
        checkpoint = load_checkpoint(last_path)
        if same_run(checkpoint["config"], args):
            check_split_unchanged(checkpoint, args, f"restarted from {last_path}", split_files)
            return checkpoint
    return None


# --- provenance: what produced a run, and on which split files ---

def fingerprint(data_dir, name):
    """{file name: sha256 of its bytes} for the split files NAME.* present in `data_dir`: what a run trained on."""
    files = (f"{name}.{suffix}" for suffix in SPLIT_SUFFIXES)
    paths = {file: os.path.join(data_dir, file) for file in files}
    return {file: file_sha256(path) for file, path in paths.items() if os.path.isfile(path)}


def changed_files(recorded, current):
    """Names of the split files whose fingerprint differs between two fingerprint() results (added, removed or
    rewritten), in file order."""
    return [file for file in dict.fromkeys([*recorded, *current]) if recorded.get(file) != current.get(file)]


def split_changes(checkpoint, data_dir, dataset, current=None):
    """Paths of the split files that differ from those the checkpoint was trained on ([] when the checkpoint
    predates split fingerprints); `current`: the split's fingerprint(), computed here when not given."""
    recorded = (checkpoint.get("provenance") or {}).get("split_files")
    if recorded is None:
        return []
    trained = checkpoint["config"]["dataset"]  # the files compared by suffix: a copy under another name is the same
    recorded = {dataset + file[len(trained):] if file.startswith(trained) else file: sha
                for file, sha in recorded.items()}
    current = fingerprint(data_dir, dataset) if current is None else current
    return [os.path.join(data_dir, file) for file in changed_files(recorded, current)]


def check_split_unchanged(checkpoint, args, source, current=None):
    """A one-line error naming the file when the split files differ from those the checkpoint was trained on
    (`current`: the split's fingerprint(), when already computed)."""
    changed = split_changes(checkpoint, args.data_dir, args.dataset, current)
    if changed:
        state = "is gone" if not os.path.exists(changed[0]) else "has changed"
        raise InputError(f"{source}: {changed[0]} {state} since the checkpoint was written (same name, other "
                         f"content): continue only on the split it was trained on, or start a new run")


def run_provenance(args, device):
    """What produced this run (code commit and tree state, library versions, device, split file hashes), printed
    once; results.json, the checkpoints and the wandb config record it."""
    record = code_provenance(device)
    record["split_dir"] = os.path.abspath(args.data_dir)  # --data_dir is kept as given, relative to where it ran
    record["split_files"] = fingerprint(args.data_dir, args.dataset)
    record["split_sha256"] = hashlib.sha256(json.dumps(record["split_files"], sort_keys=True).encode()).hexdigest()
    record["threads"] = args.threads
    commit = record["git_commit"][:10] + (" with uncommitted changes" if record["git_dirty"] else "") \
        if record["git_commit"] else "unknown (not a git checkout)"
    pinned = " ".join(f"{name}={value}" for name, value in record["pinned"].items()) or "not pinned"
    print(f"code {commit}; Python {record['python']}, torch {record['torch']}, numpy {record['numpy']}, "
          f"CUDA {record['cuda'] or 'none'}; device {record['device']} ({record['device_name']}); CPU "
          f"{record['cpu_capability']}, BLAS {record['blas']}, {args.threads} thread(s), {pinned}; "
          f"split {args.dataset} sha256 {record['split_sha256'][:12]}", flush=True)
    return record


# --- save directories ---

def default_save_dir(dataset, ctx=None):
    """(save directory, the directories made for it, outermost first, when it is new, else None). A new
    runs/DATASET/YYYYMMDD-HHMMSS; under a wandb sweep agent runs/DATASET/sweep-SWEEP_ID/RUN_ID, so that the runs of
    a sweep, and agents sharing a machine, do not overwrite each other's checkpoints. After a torchrun restart, the
    directory the first attempt chose (kept in torchrun's store, which outlives the workers), so that the run
    continues there."""
    sweep, run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run:
        return os.path.join("runs", dataset, f"sweep-{sweep}", run), None
    store = ctx.store if ctx is not None else None
    key = f"main.py/save_dir/{dataset}"
    if store is not None and distributed.restarted() and store.check([key]):
        return store.get(key).decode(), None
    path, created = new_run_dir(os.path.join("runs", dataset))
    if store is not None:
        store.set(key, path)
    return path, created


def make_dirs(path, flag="--save_dir"):
    """os.makedirs(path, exist_ok=True), with a one-line error; returns the directories it created, outermost first."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        missing.insert(0, head)
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise InputError(f"{flag} {path}: {head} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot create it: {e.strerror}") from None
    return missing


def new_run_dir(parent):
    """(PARENT/YYYYMMDD-HHMMSS, the directories made for it, outermost first): a new directory (-2, -3, ... after
    the name when a run started in the same second), made with one mkdir, so two runs started at once never share
    one."""
    created = make_dirs(parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        path = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
            return path, created + [os.path.abspath(path)]
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"--save_dir {path}: cannot create it: {e.strerror}") from None
    raise InputError(f"--save_dir: too many runs in {parent} started at {stamp}")


def check_results_dir(save_dir):
    """A one-line error when --save_dir `save_dir` holds an earlier run's results.json, which a one-shot run (no
    checkpoints to resume) never replaces."""
    if os.path.exists(os.path.join(save_dir, "results.json")):
        raise InputError(f"--save_dir {save_dir} holds an earlier run's results.json: choose another")


def results_dir(save_dir, parent):
    """Where a one-shot run writes: `save_dir` (made; check_results_dir), else a new_run_dir of `parent`."""
    if not save_dir:
        return new_run_dir(parent)[0]
    check_results_dir(save_dir)
    make_dirs(save_dir)
    return save_dir


def carry_best(resume_path, save_dir):
    """SAVE_DIR/best.pt from the best.pt beside the --resume checkpoint, when there is one: a run resumed into
    another directory keeps its best epoch so far."""
    best = os.path.join(os.path.dirname(resume_path) or ".", "best.pt")
    if os.path.exists(best):
        with atomic_path(os.path.join(save_dir, "best.pt")) as tmp:
            shutil.copyfile(best, tmp)


def run_outputs(save_dir):
    """The paths of what a run and its --pretrain stages write in SAVE_DIR (its RUN_FILES and results.md)."""
    return [os.path.join(save_dir, stage, name) for stage in ("", "gmf", "mlp") for name in (*RUN_FILES, "results.md")]


def earlier_run(save_dir):
    """The first output of an earlier run in SAVE_DIR or its --pretrain stages (SAVE_DIR/gmf, SAVE_DIR/mlp), or None."""
    paths = (os.path.join(save_dir, stage, name) for stage in ("", "gmf", "mlp") for name in RUN_FILES)
    return next((path for path in paths if os.path.exists(path)), None)


class SaveDir:
    """The save directory of a run, held by rank 0 from start to end: created (a new default one, with
    runs/DATASET/latest pointed at it) or checked (one named by --save_dir must not hold an earlier run, unless
    --overwrite, --resume or a torchrun restart), and locked so that no second run writes into it meanwhile."""

    def __init__(self, path, created, latest=None, previous=None):
        self.path, self.created, self.latest, self.previous = path, created, latest, previous
        self.lock = None

    @classmethod
    def claim(cls, args, ctx, continuing):
        if args.save_dir:
            claim = cls(args.save_dir, make_dirs(args.save_dir))
        else:
            path, created = default_save_dir(args.dataset, ctx)
            claim = cls(path, created if created is not None else make_dirs(path))
            if created is not None:
                claim.point_latest()
        try:
            claim.lock = lock_directory(claim.path)
        except InputError:
            claim.abandon()
            raise
        for path in run_outputs(claim.path):
            remove_stale_temporaries(path)  # what a run killed while writing it left
        earlier = earlier_run(claim.path)
        if earlier and not continuing:
            if not args.overwrite:
                claim.release()
                finished = "a finished" if os.path.exists(os.path.join(claim.path, "results.json")) else "an"
                raise InputError(f"--save_dir {claim.path} holds {finished} earlier run ({earlier}): continue it with "
                                 f"--resume {os.path.join(claim.path, 'last.pt')}, choose another --save_dir (or none, "
                                 f"for a new one under runs/{args.dataset}), or replace it with --overwrite")
            for path in run_outputs(claim.path):
                if os.path.exists(path):
                    os.remove(path)
            print(f"--overwrite: deleted the earlier run's results and checkpoints in {claim.path}", flush=True)
        return claim

    def point_latest(self):
        """runs/DATASET/latest -> this run's directory (a relative symbolic link, replaced in one rename)."""
        self.latest = os.path.join(os.path.dirname(self.path), "latest")
        try:
            self.previous = point_symlink(self.latest, os.path.basename(self.path))
        except OSError as e:
            print(f"note: cannot point {self.latest} at {self.path} ({e.strerror})", flush=True)
            self.latest = None

    def abandon(self):
        """Remove what this run created, if it wrote no results or checkpoints, and point latest back."""
        if not self.created or self.created[-1] != os.path.abspath(self.path) or earlier_run(self.path):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self.latest and os.path.islink(self.latest) and os.readlink(self.latest) == os.path.basename(self.path):
            if self.previous:
                point_symlink(self.latest, self.previous)
            else:
                os.remove(self.latest)
        for directory in reversed(self.created[:-1]):
            try:
                os.rmdir(directory)
            except OSError:
                break

    def release(self):
        if self.lock is not None:
            self.lock.close()
            self.lock = None
