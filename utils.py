"""Small shared helpers: one-line input errors with exit status 2, reading JSON with such errors, outputs checked
before the work and written atomically, links, the CLI parser, progress lines, directory locks, what runs the code
(provenance) and the memory left on a device."""
import argparse
import ctypes
import json
import os
import stat
import sys
import tempfile
import time
from contextlib import contextmanager


MISSING = object()  # read_json's value of a key an object does not have


class InputError(Exception):
    """Bad input from the user (file, line, record or flag). Reported as one line, exit status 2."""


def one_line(error, limit=160):
    """The first line of an exception's message (its type name when it has none), cut to at most `limit`
    characters at a word's end ("..." where cut)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit - 3].rsplit(" ", 1)[0] if " " in line[:limit - 3] else line[:limit - 3]
    return cut.rstrip(" ,;:") + "..."


def fail(message):
    """Print `error: message` on stderr and exit with status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


MAX_THREADS = 1024  # --threads: torch's OpenMP cannot start many thousands (it crashes at 100,000)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2; integer values beyond 64 bits (what numpy and
    torch hold) and text with a NUL character (which no path or name can hold) refused."""

    def error(self, message):
        fail(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            values = value if isinstance(value, list) else [value]
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if any(isinstance(v, str) and "\0" in v for v in values):
                self.error(f"{flag}: a value with a NUL character")
            wild = next((v for v in values if type(v) is int and not -2 ** 63 <= v < 2 ** 63), None)
            if wild is not None:
                self.error(f"{flag} {wild}: too large")
        return parsed, rest


def run_cli(main):
    """Run `main()`; turn an InputError into a one-line error and exit status 2, and running out of memory into one
    line and exit status 1."""
    try:
        main()
    except InputError as e:
        fail(str(e))
    except MemoryError as e:
        print(f"error: out of memory ({one_line(e) if str(e) else 'an allocation failed'})", file=sys.stderr)
        sys.exit(1)


def exit_status(e):
    """The exit status of a process that ends with SystemExit `e`, its message printed as Python prints it."""
    if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


def read_json(path, keys, where=None):
    """json.load `path` (UTF-8, with or without a byte order mark), keeping only `keys` of each object (as a tuple,
    MISSING where absent) to save memory, or everything when `keys` is None; with `where`, an object for which
    where(object) is false becomes None. A one-line InputError naming the file when it cannot be read."""
    def keep(record):
        return tuple(record.get(k, MISSING) for k in keys) if where is None or where(record) else None

    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f, object_hook=keep if keys is not None else None)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # an integer of more digits than Python converts (4,300)
        raise InputError(f"{path}: unreadable JSON ({one_line(e, 100)})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested deeper than {sys.getrecursionlimit():,} levels") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def plural(n, word, words=None):
    """'1 playlist', '2 playlists', '1,000 songs' (`words`: the plural when it is not word + 's')."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


PROGRESS_SECONDS = 10.0  # long work says how far it is this often


class Progress:
    """Lines on how far long work is ("WHAT: 5 of 20 STEPS, 12 s"), one every PROGRESS_SECONDS at most, the first
    after that long: work shorter than that prints nothing."""

    def __init__(self, what, total, unit):
        self.what, self.total, self.unit = what, total, unit
        self.started = self.shown = time.perf_counter()

    def __call__(self, done):
        now = time.perf_counter()
        if now - self.shown >= PROGRESS_SECONDS:
            self.shown = now
            print(f"{self.what}: {done:,} of {plural(self.total, self.unit)}, {now - self.started:.0f} s", flush=True)


# --- outputs: checked before the work, written atomically (or through, for a device or FIFO) ---

REFUSED_ROOTS = ("/proc", "/sys")  # kernel interfaces, never a place for results
_checked = {}  # output path -> its state when check_output saw it: atomic_path keeps another process's write


def file_state(path):
    """(device, inode, modification time, size) of `path`, or None when there is nothing there."""
    try:
        s = os.stat(path)
    except FileNotFoundError:
        return None
    return s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size


def written_through(path):
    """Whether `path` is a character device or FIFO (/dev/null, /dev/stdout, a named pipe): opened and written,
    never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_output(path, flag, inputs=()):
    """The path to write FLAG's output `path` to (a symbolic link's target), checked before any work: not under
    /proc or /sys, not a directory, a regular file, device or FIFO or nothing yet, writable, in a directory that
    is or can be made, and not one of the run's `inputs` [(flag, path)]; a one-line InputError naming the flag
    otherwise. Removes what an earlier run killed while writing it left (stale temporaries)."""
    path = os.fspath(path)
    if path.endswith((os.sep, os.sep + ".", os.sep + "..")):
        raise InputError(f"{flag} {path}: a directory's name, not a file's")
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (a link to nothing: written where it points)
        pass
    except OSError as e:  # a loop of links, a file where a directory should be, ...
        raise InputError(f"{flag} {path}: {e.strerror}") from None
    real = os.path.realpath(path)
    root = next((r for r in REFUSED_ROOTS if real == r or real.startswith(r + os.sep)), None)
    if root is not None:
        raise InputError(f"{flag} {path}: under {root}, not a place to write to")
    if os.path.isdir(real):
        raise InputError(f"{flag} {path}: a directory, not a file")
    for input_flag, input_path in inputs:
        if input_path and os.path.exists(input_path) and os.path.exists(real) and os.path.samefile(real, input_path):
            raise InputError(f"{flag} {path}: the same file as {input_flag} {input_path}, which it would "
                             f"overwrite; choose another {flag}")
    if os.path.exists(real):
        mode = os.stat(real).st_mode
        if not (stat.S_ISREG(mode) or written_through(real)):
            raise InputError(f"{flag} {path}: not a regular file, device or FIFO")
        if not os.access(real, os.W_OK):
            raise InputError(f"{flag} {path}: not writable")
    if not written_through(real):
        directory = os.path.dirname(real)
        while not os.path.exists(directory):
            directory = os.path.dirname(directory)
        if not os.path.isdir(directory):
            raise InputError(f"{flag} {path}: {directory} is a file, not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: cannot write in {directory}")
        remove_stale_temporaries(real)
    _checked[real] = file_state(real)
    return real


def remove_stale_temporaries(path):
    """Remove the temporary files beside `path` (.NAME.*.tmp) that atomic_path left when a process writing it was
    killed: those of processes no longer running (their pid is in the name), and those with no pid in their name
    (written by older versions of this code)."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        siblings = os.listdir(directory)
    except OSError:
        return
    for sibling in siblings:
        if not (sibling.startswith(f".{name}.") and sibling.endswith(".tmp")):
            continue
        pid = sibling[len(name) + 2:].split(".")[0]
        if pid.isdigit() and process_running(int(pid)):
            continue
        try:
            os.remove(os.path.join(directory, sibling))
        except OSError:
            pass


def process_running(pid):
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (a symbolic link's target); rename it onto `path` only if the block
    succeeds, removing it otherwise (an exception, Ctrl-C). A device or FIFO (/dev/null) is yielded itself, to be
    written through. An InputError, and nothing replaced, when check_output saw `path` and another process has
    written it since."""
    path = os.path.realpath(path)
    if written_through(path):
        yield path
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        if path in _checked and file_state(path) != _checked[path]:
            raise InputError(f"{path}: written by another process while this one ran; not replaced (run again "
                             f"to replace it)")
        os.replace(tmp, path)
        _checked.pop(path, None)  # written: a later write is its own (checked again, or not at all)
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


def lock_directory(directory, what="--save_dir"):
    """Hold an exclusive lock on DIRECTORY/.lock (fcntl.flock, released when the process ends, however it ends);
    returns the open lock file, to close when done. An InputError naming the holder if another process has it."""
    import fcntl
    path = os.path.join(directory, ".lock")
    try:
        f = open(path, "a+")
    except OSError as e:
        raise InputError(f"{what} {directory}: cannot write there: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise InputError(f"{what} {directory} is in use by a run still in progress ({holder}): wait for it to end, "
                         f"or choose another {what}") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    return f


def point_symlink(link, target):
    """Make `link` a symbolic link to `target` (relative to the link's directory), replacing what was there in one
    rename, so that a reader finds the old link or the new one, never none. Returns the previous target or None."""
    previous = os.readlink(link) if os.path.islink(link) else None
    tmp = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return previous


def file_sha256(path, chunk=1 << 20):
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# Environment variables that pin the floating-point code paths, read when torch loads, so set before it is imported
# (reproduce.py does): torch's own kernels to AVX2, MKL's BLAS to its conditional numerical reproducibility branch
# for AVX2, oneDNN to AVX2. With the thread count fixed too, the same command gives the same figures on x86-64
# machines with AVX2, whatever else their CPU has.
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def numerics_provenance():
    """What decides the floating-point results on the CPU: its model, the kernels torch dispatches to (its CPU
    capability), the BLAS and oneDNN in use, and which PINNED_NUMERICS variables are set (to what)."""
    import re
    import torch
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    blas = blas.group(1) if blas else "unknown"
    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": f"{blas} {mkl.group(1)}" if blas == "mkl" and mkl else blas,
            "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
            "pinned": {name: os.environ[name] for name in PINNED_NUMERICS if name in os.environ}}


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor() or platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def code_provenance(device):
    """What runs this code: its git commit and whether the work tree had changes (None outside a git checkout),
    Python, torch, numpy and CUDA versions, the device with its name, and numerics_provenance()."""
    import platform
    import subprocess
    import numpy
    import torch
    repo = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"git_commit": commit, "git_dirty": bool(status) if commit else None,
            "python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
            "cuda": torch.version.cuda, "device": str(device), "device_name": name, **numerics_provenance()}


def keep_freed_memory(top_pad=64 << 20):
    """Ask the C library's malloc to keep the memory of freed tensors for the next ones instead of returning it to
    the kernel: otherwise every tensor over 32 MB (a block of [rows, songs] scores in playlist continuation) is a
    fresh mmap whose pages fault in one at a time, which at Melon scale took more than half of the wall time. The
    process keeps its high-water mark of memory instead. Nothing where malloc has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's malloc.h
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2 ** 31 - 1)
    mallopt(m_top_pad, top_pad)


def available_memory(device):
    """Bytes that can still be allocated on `device` (free GPU memory; on the CPU, free_ram()), or None when
    unknown."""
    if device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    return free_ram()


def free_ram():
    """Bytes of RAM that can still be allocated (MemAvailable plus free swap), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None


def human_bytes(n):
    """1536 -> '1.5 KB', 3e9 -> '3.0 GB' (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
