"""Weights & Biases for main.py: choosing the mode (--wandb, $WANDB_MODE, credentials), starting a run that falls
back to offline logging when the server cannot be reached, a run whose failures never stop training (SafeRun),
and what an epoch logs.
"""
import math
import os
import shutil
import sys
from types import SimpleNamespace

from utils import InputError, one_line

WANDB_PROJECT = "recommendation"
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
AUTO_INIT_TIMEOUT = 15.0  # seconds --wandb auto waits for the wandb server before logging offline
EPOCH_KEYS = {"loss": "epoch_loss", "hr": "test/hr@{k}", "ndcg": "test/ndcg@{k}", "val_hr": "val/hr@{k}",
              "val_ndcg": "val/ndcg@{k}"}  # an epoch record's keys as logged (the others keep their names)


def wandb_credentials_present():
    """Whether wandb can log in without prompting (API key in the environment, netrc or wandb's settings),
    by wandb's own lookup; reads files only, no network. A malformed key counts as present, so an online
    run fails loudly instead of silently going offline."""
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth
    try:
        return wbauth.authenticate_session(host=wandb_setup.singleton().settings.base_url, source="--wandb auto",
                                           prompt=False, verify=False, update_session=False) is not None
    except AuthenticationError:
        return True
    except ValueError:
        return False


def wandb_mode(args):
    """(mode asked for, how it was asked): --wandb when given, else $WANDB_MODE, else disabled when
    $WANDB_DISABLED is true, else auto."""
    if args.wandb is not None:
        return args.wandb, f"--wandb {args.wandb}"
    value = os.environ.get("WANDB_MODE", "").strip()
    if value:
        if value.lower() not in WANDB_MODES:
            raise InputError(f"WANDB_MODE={value}: expected online, offline or disabled")
        return WANDB_MODES[value.lower()], f"WANDB_MODE={value}"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled", "WANDB_DISABLED"
    return "auto", "--wandb auto"


def wandb_init_timeout(default):
    """Seconds wandb.init may wait for the server: $WANDB_INIT_TIMEOUT when set, else `default`."""
    value = os.environ.get("WANDB_INIT_TIMEOUT")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or not math.isfinite(seconds):
        raise InputError(f"WANDB_INIT_TIMEOUT={value}: expected a positive number of seconds")
    return seconds


def start_wandb(args, data, run_id, provenance=None):
    """A wandb run (a SafeRun), or None when disabled. The mode is --wandb, else $WANDB_MODE, else auto: online
    with credentials, offline otherwise; and offline, with a notice, when the server cannot be reached within
    WANDB_INIT_TIMEOUT seconds. Asked for online explicitly, that failure is a one-line error instead. The project
    and directory honour $WANDB_PROJECT and $WANDB_DIR unless --wandb_project is given."""
    requested, asked = wandb_mode(args)
    if requested == "disabled":
        return None
    timeout = wandb_init_timeout(AUTO_INIT_TIMEOUT if requested == "auto" else None)
    import wandb
    wandb.setup(settings=wandb.Settings(silent=True))  # no login banner or warnings of its own: one-line errors
    mode = requested if requested != "auto" else ("online" if wandb_credentials_present() else "offline")
    config = dict(vars(args), num_users=data.num_users, num_items=data.num_items,
                  num_train=len(data.train_users), num_test=len(data.test.users), provenance=provenance)
    kwargs = dict(project=args.wandb_project or os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, config=config,
                  id=run_id, resume="allow" if run_id else None)
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = args.save_dir
    settings = dict(silent=True, **({"init_timeout": timeout} if timeout else {}))
    runs_dir = os.path.join(os.environ.get("WANDB_DIR") or args.save_dir, "wandb")
    before = set(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else set()
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
    except Exception as e:  # CommError, UsageError, AuthenticationError, timeouts: whatever keeps wandb from starting
        for name in set(os.listdir(runs_dir) if os.path.isdir(runs_dir) else ()) - before:
            if name.startswith("run-"):  # the online attempt's files: nothing to sync
                shutil.rmtree(os.path.join(runs_dir, name), ignore_errors=True)
        if mode == "offline" or requested == "online":
            advice = "; check the network and the API key, or use --wandb offline" if mode == "online" else ""
            raise InputError(f"{asked}: wandb could not start a run ({one_line(e)}){advice}") from None
        where = os.path.join(runs_dir, "offline-run-*")
        print(f"note: wandb could not start an online run within {timeout:g} s ({one_line(e)}): logging offline "
              f"instead; upload it later with: wandb sync {where}", flush=True)
        try:
            run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        except Exception as e:
            raise InputError(f"{asked}: wandb could not start an offline run either ({one_line(e)})") from None
    run = SafeRun(run)
    run.define_metric("epoch")
    for key in ("test/*", "val/*", "epoch_loss", "train_seconds", "eval_seconds", "samples_per_second"):
        run.define_metric(key, step_metric="epoch")
    return run


class SafeRun:
    """A wandb run whose failures cost the logging, never the training: the first exception from wandb prints one
    warning, and nothing more is sent to wandb in this run (what was logged before stays); finish() still tries to
    close the failed run, quietly, so that its files are complete and a later wandb.init starts afresh."""

    def __init__(self, run):
        self.run, self.id, self.failed = run, run.id, None
        self.summary = SimpleNamespace(update=lambda values: self.guard(lambda run: run.summary.update(values)))

    def guard(self, action):
        """action(run), unless wandb failed before; a wandb exception becomes one warning."""
        if self.run is None:
            return None
        try:
            return action(self.run)
        except Exception as e:
            print(f"warning: wandb failed ({type(e).__name__}: {one_line(e)}); training continues without wandb",
                  file=sys.stderr, flush=True)
            self.run, self.failed = None, self.run

    def log(self, *args, **kwargs):
        return self.guard(lambda run: run.log(*args, **kwargs))

    def define_metric(self, *args, **kwargs):
        return self.guard(lambda run: run.define_metric(*args, **kwargs))

    def log_model(self, path, name, metadata):
        """Upload the checkpoint at `path` as a model artifact."""
        def log(run):
            import wandb
            artifact = wandb.Artifact(name, type="model", metadata=metadata)
            artifact.add_file(path)
            run.log_artifact(artifact)
        return self.guard(log)

    def finish(self, **kwargs):
        self.guard(lambda run: run.finish(**kwargs))
        if self.failed is not None:
            try:
                self.failed.finish(**kwargs)
            except Exception:
                pass
        self.run = self.failed = None


def log_epoch(run, record, k, recommendations, columns, step, best):
    """Log an epoch's record (main.py's history entry: loss, test and validation HR@k and NDCG@k, timings), its
    table of recommendations (rows of `columns` after the epoch) at global step `step`; the best epoch so far
    goes to the run's summary."""
    import wandb
    logged = {EPOCH_KEYS.get(key, key).format(k=k): value for key, value in record.items()}
    logged["recommendations"] = wandb.Table(columns=columns, data=[[record["epoch"], *r] for r in recommendations])
    run.log(logged, step=step)
    run.summary.update({"best_epoch": best["epoch"], f"best/hr@{k}": best["hr"], f"best/ndcg@{k}": best["ndcg"]})
