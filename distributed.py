"""torch.distributed for main.py: join the process group torchrun set up (or spawn one process per listed GPU),
split batches and evaluation across ranks, and stop every rank at the same step on Ctrl-C or SIGTERM.

One process per GPU (NCCL), or per CPU process with `--gpu cpu` (gloo). Every rank holds the whole data set
and draws the same shuffled epoch (the generator depends on (seed, epoch) only); each global batch of
--batch_size samples is dealt out across the ranks, so a 2-rank run takes the same optimizer steps as a
1-rank run at the same --batch_size.
"""
import multiprocessing.util
import os
import signal
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import exit_status, resolve_device, run_cli


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device
    store: object = None  # the launcher's key-value store (torchrun's outlives restarts); None without one

    @property
    def is_main(self):
        return self.rank == 0

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def sum(self, values):
        """Element-wise sum over ranks of a list of numbers, as float64 (the numbers themselves on one rank)."""
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(totals)
        return totals.tolist()

    def gather_rows(self, rows):
        """Every rank's `rows` concatenated along dimension 0 in rank order (the numbers of rows may differ)."""
        if self.world_size == 1:
            return rows
        lengths = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(lengths, torch.tensor([len(rows)], device=self.device))
        lengths = [int(n) for n in lengths]
        padded = rows.new_zeros((max(lengths), *rows.shape[1:]))
        padded[:len(rows)] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, lengths)])

    def gather_sparse_rows(self, indices, values, max_rows):
        """Every rank's (indices [n], values [n, ...]) concatenated in rank order, with at most `max_rows` rows on
        any rank: one all-gather of each rank's row count, index and value bytes, padded to `max_rows` rows."""
        dense_strides = torch.contiguous_format  # .contiguous() keeps a one-row tensor's odd strides
        values = values.clone(memory_format=dense_strides)
        if len(values) > max_rows:
            raise RuntimeError(f"a sparse gradient has {len(values)} rows, more than the {max_rows} expected")
        value_bytes = values.flatten(1).view(torch.uint8)
        packed = value_bytes.new_zeros((1 + max_rows, 8 + value_bytes.shape[1]))
        packed[0, :8] = torch.tensor([len(values)], dtype=torch.int64, device=values.device).view(torch.uint8)
        packed[1:1 + len(values), :8] = indices.clone(memory_format=dense_strides).view(torch.uint8).view(-1, 8)
        packed[1:1 + len(values), 8:] = value_bytes
        gathered = [torch.empty_like(packed) for _ in range(self.world_size)]
        dist.all_gather(gathered, packed)
        counts = torch.stack([g[0, :8] for g in gathered]).view(torch.int64).flatten().tolist()
        rows = torch.cat([g[1:1 + n] for g, n in zip(gathered, counts)])
        return (rows[:, :8].contiguous().view(torch.int64).flatten(),
                rows[:, 8:].contiguous().view(values.dtype).view(-1, *values.shape[1:]))

    def mean_sparse(self, grad, max_rows):
        """The mean over ranks of a sparse gradient of at most `max_rows` rows on every rank (uncoalesced: every
        rank's rows, each divided by the ranks)."""
        indices, values = self.gather_sparse_rows(grad._indices().flatten(), grad._values(), max_rows)
        return torch.sparse_coo_tensor(indices[None], values / self.world_size, grad.shape, check_invariants=False)

    def sum_(self, tensor):
        """`tensor` replaced, in place, by its element-wise sum over ranks."""
        dist.all_reduce(tensor)

    def broadcast_(self, tensor):
        """`tensor` replaced, in place, by rank 0's."""
        dist.broadcast(tensor, src=0)

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object, e.g. a checkpoint) on every rank."""
        if self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0, device=self.device)
        return holder[0]


def data_parallel(model, ctx, batch_size):
    """`model` for training on every rank of `ctx` with global batches of `batch_size`, all starting from rank 0's
    weights: DistributedDataParallel all-reduces the dense gradients; the embeddings with sparse gradients are
    left out of it, and a hook replaces each of their gradients by the mean over ranks, gathering every rank's
    rows (one row per sample of the rank's shard). (Gloo's sparse all-reduce, which DDP would use, crashes
    intermittently when ranks' gradients differ in size, and NCCL has none; with the rows gathered, lazy Adam
    works on both.)"""
    if ctx.world_size == 1:
        return model
    sparse = {f"{name}.weight": module.weight for name, module in model.named_modules()
              if isinstance(module, torch.nn.Embedding) and module.sparse}
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(sparse))
    max_rows = -(-batch_size // ctx.world_size)  # the largest shard of a global batch
    for weight in sparse.values():
        dist.broadcast(weight.data, src=0)
        weight.register_post_accumulate_grad_hook(lambda w: setattr(w, "grad", ctx.mean_sparse(w.grad, max_rows)))
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                     else None)


def launched():
    """Whether this process is one rank of a group started by torchrun or by spawn()."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(gpu):
    """The Context of this process; under torchrun or spawn(), join the process group first (NCCL on CUDA,
    gloo on the CPU). The device of a rank is the --gpu entry at its local rank; one entry (or 0, the
    default) with several processes per node means torchrun's convention, GPU = local rank."""
    if not launched():
        return Context(0, 1, resolve_device(gpu))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(gpu, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    store = None
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # torchrun's store outlives a restart: without a prefix per attempt, a rank could read the address a
        # dead rank of the previous attempt published and fail to connect.
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                store=dist.PrefixStore(f"attempt_{attempt}/", store),
                                device_id=device if device.type == "cuda" else None)
    return Context(dist.get_rank(), dist.get_world_size(), device, store)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def restarted():
    """Whether torchrun restarted this worker group after a failure (--max_restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0


def spawn(main, argv, nprocs):
    """Run main(argv) in `nprocs` local processes, ranks 0..nprocs-1 of one group, as torchrun would start
    them; returns the exit status (the first failing rank's, 0 if all succeeded). Ctrl-C reaches the ranks
    from the terminal; a SIGTERM sent to this process is passed on to them."""
    # Like torchrun's agent, this process hosts the group's store, so that it outlives every rank.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    context = mp.start_processes(run_rank, args=(main, argv, env), nprocs=nprocs, join=False, start_method="spawn")
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: [os.kill(pid, signum) for pid in context.pids()])
    try:
        while not context.join():
            pass
        return 0
    except mp.ProcessExitedException as e:
        return e.exit_code if e.exit_code > 0 else 128 - e.exit_code  # a negative code is a signal number
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_rank(rank, main, argv, env):
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    run_process(lambda: main(argv))


def run_process(main):
    """run_cli(main), then exit. A rank of a process group leaves with os._exit, once its output is flushed,
    skipping interpreter shutdown: DistributedDataParallel keeps the gloo process group and its threads alive
    past destroy_process_group, and a gloo thread that releases the last collective's tensors while Python shuts
    down aborts the process ("terminate called without an active exception", exit status 134)."""
    if not launched():
        return run_cli(main)
    try:
        run_cli(main)
        status = 0
    except SystemExit as e:
        status = exit_status(e)
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        status = 1
    multiprocessing.util._exit_function()  # what a spawned process does on its way out: finalizers, flushes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class StopRequest:
    """Turns SIGINT/SIGTERM into a request that the training loop honours at its next agreement point
    (every --log_every steps and at the end of each epoch), so that every rank stops after the same step."""

    def __init__(self, announce=True):
        self.signum = None
        self.previous = {}
        self.announce = announce

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.request)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def request(self, signum, frame):
        if self.signum is None and self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after the current step and saving last.pt", flush=True)
        self.signum = signum

    @property
    def exit_status(self):
        return 128 + (self.signum or signal.SIGINT)
