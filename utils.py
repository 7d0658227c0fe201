"""Small shared helpers: one-line input errors with exit status 2, atomic file writes, the CLI parser."""
import argparse
import os
import sys
import tempfile
from contextlib import contextmanager


class InputError(Exception):
    """Bad input from the user (file, line, record or flag). Reported as one line, exit status 2."""


def fail(message):
    """Print `error: message` on stderr and exit with status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message):
        fail(f"{self.prog}: {message}")


def run_cli(main):
    """Run `main()`; turn an InputError into a one-line error and exit status 2."""
    try:
        main()
    except InputError as e:
        fail(str(e))


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_open(path, mode="w", **kwargs):
    """open() for writing that leaves either the old file or the complete new one, never a partial one."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def gpu_indices(gpu):
    """The CUDA indices of a --gpu value (an index or a comma-separated list like 2,3), or None for 'cpu'."""
    if gpu.strip().lower() == "cpu":
        return None
    indices = [x.strip() for x in gpu.split(",")]
    if not all(x.isdigit() for x in indices):
        fail(f"--gpu: expected a CUDA index, a list like 2,3, or cpu; got {gpu!r}")
    return [int(x) for x in indices]


def resolve_device(gpu, local_rank=0, local_world_size=1):
    """torch.device for a --gpu value, for the process at `local_rank` of `local_world_size` on this machine:
    the list's entry at the local rank, or with one entry and several processes the GPU numbered by the local
    rank (torchrun's convention). Falls back to the CPU with a notice when CUDA is absent."""
    import torch
    indices = gpu_indices(gpu)
    if indices is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if local_rank == 0:
            print(f"note: --gpu {gpu} asked for CUDA, which is not available here: running on the CPU")
        return torch.device("cpu")
    if len(indices) == 1 and local_world_size > 1:
        index = local_rank
    elif local_rank < len(indices):
        index = indices[local_rank]
    else:
        fail(f"--gpu {gpu}: {len(indices)} GPUs listed for {local_world_size} processes on this machine")
    if index >= torch.cuda.device_count():
        fail(f"--gpu: CUDA device {index} does not exist ({torch.cuda.device_count()} visible)")
    return torch.device(f"cuda:{index}")
