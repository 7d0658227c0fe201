"""The training step a run uses, one epoch of training, and where a run stands between epochs and steps (what its
checkpoints record).

make_step builds the step the flags ask for (optim.py): the fused one where it agrees with the model's forward,
else autograd through forward. train_epoch draws an epoch's samples (dataloader.py), deals its global batches out
across the ranks and feeds them to the training step, logging the loss and honouring stop requests every
--log_every steps; Position is the run's place: epochs done, steps and loss into the next one, steps in all,
history and best.
"""
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import dataloader
import distributed
from optim import FUSED_OPTIMIZERS, SPARSE_OPTIMIZERS, AutogradStep, FusedStep, fused_step_agrees, torch_optimizer
from utils import InputError


def uses_sparse_updates(args, device, say=print):
    """Whether the embeddings get sparse (lazy) updates: asked for (by default on the CPU), and the optimizer and
    weight decay allow it."""
    wanted = device.type != "cuda" if args.sparse is None else args.sparse
    if wanted and (args.l2 > 0 or args.optim not in SPARSE_OPTIMIZERS):
        if args.sparse:
            say(f"note: dense embedding updates, as --optim {args.optim} with --l2 {args.l2} needs them")
        return False
    return wanted


def make_step(model, args, sparse, ctx):
    """The training step for `model` on every rank of `ctx` (--step): FusedStep for Adam and SGD where one step of it
    agrees with autograd through the model's forward on a small batch (checked here, once), else autograd with a
    torch optimizer, as for the other optimizers and --amp. Where they disagree, one line says so; with --step
    fused, an InputError."""
    betas = (args.beta1, args.beta2)
    fused = args.optim in FUSED_OPTIMIZERS and not args.amp and args.step != "autograd"
    if fused:
        agrees, why = fused_step_agrees(model, args.optim, args.lr, betas, args.l2, sparse)
        if ctx.sum([not agrees])[0]:  # every rank takes the same kind of step
            why = why or "on another rank"
            if args.step == "fused":
                raise InputError(f"--step fused: the fused step disagrees with the model's forward ({why}); leave "
                                 f"--step out or use --step autograd")
            ctx.print(f"note: the fused step disagrees with the model's forward ({why}): training through autograd")
            fused = False
    if fused:
        return FusedStep(model, args.optim, args.lr, betas, l2=args.l2, sparse=sparse, ctx=ctx,
                         batch_size=args.batch_size)
    optimizer = torch_optimizer(model.parameters(), args.optim, args.lr, betas, args.l2, sparse)
    return AutogradStep(distributed.data_parallel(model, ctx, args.batch_size), optimizer, args.amp, ctx.world_size)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


class Stopped(Exception):
    """A stop request (Ctrl-C, SIGTERM) ended an epoch early; the Position says where."""


@dataclass
class Position:
    """Where a run stands: `epoch` epochs done, then `step` steps of the next one (a run stopped inside it) whose
    samples' losses sum to `loss_sum` (over all ranks; on this rank only its share, see from_checkpoint);
    `global_step` steps in all; the `history` of epoch records and the `best` of them. A checkpoint holds these
    under the keys of state()."""
    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint, is_main=True):
        """The position a checkpoint records (the start, without one). The loss so far is rank 0's to carry: the
        ranks' losses are summed, so it must count once."""
        if checkpoint is None:
            return cls()
        return cls(checkpoint["epoch"], checkpoint.get("step", 0),
                   checkpoint.get("epoch_loss_sum", 0.0) if is_main else 0.0, checkpoint["global_step"],
                   checkpoint["history"], checkpoint["best"])

    def state(self):
        """The checkpoint's entries for this position."""
        return dict(epoch=self.epoch, step=self.step, epoch_loss_sum=self.loss_sum, global_step=self.global_step,
                    history=self.history, best=self.best)

    def end_epoch(self, num_samples):
        """Count the epoch being trained as done; returns its mean loss over its `num_samples` samples."""
        loss = self.loss_sum / num_samples
        self.epoch, self.step, self.loss_sum = self.epoch + 1, 0, 0.0
        return loss

    def add(self, record, selected):
        """Append an epoch's record to the history; it becomes the best when `selected` (its NDCG on the split that
        selects the epoch) beats the best so far. Returns whether it did."""
        self.history.append(record)
        improved = self.best is None or selected > self.best["selected"]
        if improved:
            self.best = {"epoch": record["epoch"], "hr": record["hr"], "ndcg": record["ndcg"], "selected": selected}
        return improved


def epoch_size(data, args):
    """Training samples in an epoch: every positive and its --num_neg negatives."""
    return len(data.train_users) * (1 + args.num_neg)


def train_epoch(train_step, data, args, ctx, position, stop=None, run=None):
    """Train epoch position.epoch + 1 through `train_step` (optim.py) from its batch position.step on (0 unless
    resuming inside it), and advance `position` by the steps taken (step, loss_sum: summed over all ranks, and
    global_step). Each global batch of --batch_size samples is dealt out across the ranks of `ctx`, and each
    sample's loss weighted by 1 / the global batch, so that the gradient summed over the ranks is the global
    batch's mean loss's. Every --log_every steps the ranks agree on the loss (logged to the wandb `run`) and on any
    stop request (stop: a distributed.StopRequest). Returns the number of samples trained. Raises Stopped when a
    stop request ended the epoch early, Diverged when the loss is no longer finite."""
    epoch = position.epoch + 1
    users, items, labels = dataloader.epoch_samples(data, args.num_neg, args.seed, epoch)
    num_samples = len(users)
    start_step = step = position.step
    loss_sum = torch.full((), position.loss_sum, dtype=torch.float64, device=data.device)
    first = min(start_step * args.batch_size, num_samples)
    logged_loss, logged_samples = position.loss_sum, first  # over all ranks, at the last log point
    started = time.perf_counter()
    shards = dataloader.batches([users, items, labels], args.batch_size, ctx.rank, ctx.world_size, start_step)
    stopped = False
    with tqdm(total=num_samples, initial=first, desc=f"epoch {epoch}", unit="sample", unit_scale=True, leave=False,
              disable=not (ctx.is_main and sys.stdout.isatty())) as bar:
        for step, (u, i, y) in enumerate(shards, start_step + 1):
            global_batch = min(args.batch_size, num_samples - (step - 1) * args.batch_size)
            loss_sum += train_step(u, i, y, 1.0 / global_batch)
            if step % args.log_every == 0:
                total, stops = ctx.sum([loss_sum.item(), stop is not None and stop.signum is not None])
                done = min(step * args.batch_size, num_samples)
                mean = (total - logged_loss) / (done - logged_samples)
                logged_loss, logged_samples = total, done
                if not math.isfinite(mean):
                    raise Diverged(mean)
                if run is not None:
                    run.log({"train/loss": mean, "epoch": epoch - 1 + done / num_samples},
                            step=position.global_step + step - start_step)
                bar.update(done - bar.n)
                speed = (done - first) / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{mean:.4f}", samples_per_s=f"{speed:,.0f}")
                if stops:
                    stopped = True
                    break
    position.loss_sum = ctx.sum([loss_sum.item()])[0]
    position.global_step += step - start_step
    position.step = step
    if stopped:
        raise Stopped()
    return num_samples - first
