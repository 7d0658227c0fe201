"""Read back what an offline wandb run logged, for tests (no mocking of wandb).

wandb 0.31 writes each offline run to ``wandb/offline-run-*/run-<id>.wandb``
and no longer ships a Python reader for it. The format (checked by experiment
on wandb 0.31.0):

* a 7-byte file header: ``b":W&B"``, magic 0xBEE1 (little-endian u16),
  version byte 0;
* then a LevelDB-style log in 32 KiB blocks, counted from the start of the
  FILE (the header takes the first 7 bytes of block 0). Each chunk is a 7-byte
  header ``<crc32 u32><length u16><type u8>`` plus ``length`` bytes; type is
  1 full, 2 first, 3 middle, 4 last. A chunk header never straddles a block:
  when fewer than 7 bytes remain in a block they are zero padding. The crc is
  the ordinary zlib (IEEE) crc32 of the type byte followed by the payload;
* each reassembled payload is a serialized ``wandb_internal_pb2.Record``.

``read_run(path)`` replays the history, summary and config records into
plain Python values (decoded from ``value_json``). Keys given as a
``nested_key`` path become nested dicts, e.g. a logged ``wandb.Table`` under
"tab" shows up as ``history[i]["tab"] == {"_type": "table-file", ...}``.
wandb's internal ``_wandb`` entry is dropped from config and summary;
history rows keep wandb's ``_step``, ``_runtime`` and ``_timestamp``.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def find_wandb_file(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a .wandb file, else the single one below it."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.rglob("*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected exactly one .wandb file under {path}, found {found}")
    return found[0]


def iter_records(path: str | os.PathLike) -> Iterator[pb.Record]:
    """Yield every ``Record`` in a .wandb file, in write order.

    A torn final chunk (the run was killed mid-write) ends the iteration;
    a crc mismatch raises ValueError.
    """
    data = find_wandb_file(path).read_bytes()
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise ValueError(f"not a wandb 0.31 run file (header {data[:7]!r})")
    pos, pending = len(FILE_HEADER), None
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # zero padding at block end
            pos += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start, pos = pos + CHUNK_HEADER.size, pos + CHUNK_HEADER.size + length
        if pos > len(data):
            return  # truncated last chunk
        payload = data[start:pos]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"crc mismatch in chunk at offset {start - CHUNK_HEADER.size}")
        if kind in (FULL, FIRST):
            pending = payload
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += payload
        else:
            raise ValueError(f"unexpected chunk type {kind} at offset {start - CHUNK_HEADER.size}")
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = None
            yield record


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _item_value(item: Any) -> Any:
    kind = item.WhichOneof("value") if isinstance(item, pb.HistoryItem) else None
    if kind is None:
        return json.loads(item.value_json) if item.value_json else None
    if kind == "none":
        return None
    return json.loads(item.json) if kind == "json" else getattr(item, kind)


def _set(target: dict, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value


def _remove(target: dict, path: list[str]) -> None:
    for key in path[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply(target: dict, updates: Any, removes: Any = ()) -> None:
    for item in updates:
        _set(target, _item_path(item), _item_value(item))
    for item in removes:
        _remove(target, _item_path(item))


def read_run(path: str | os.PathLike, wait: float = 30.0) -> dict:
    """Replay an offline run file (or the one .wandb file under a directory), waiting up to `wait` seconds for
    its run record: wandb's service process may still be writing the file when the run that logged it returns.

    Returns a dict with keys:
      "config":    {key: value} after all config updates (no "_wandb"),
      "history":   one {key: value} dict per history record, in order,
      "summary":   {key: value} after all summary updates (no "_wandb"),
      "tables":    {history key: {"columns": [...], "data": [...]}} for each
                   logged wandb.Table (last one logged per key), read from
                   the run's files/ dir; absent files are skipped,
      "files":     relative paths of files the run saved (in write order),
      "artifacts": [{"name", "type", "aliases"}] for each artifact record,
      "run":       {"id", "project", "entity", "name", "tags"} from the run record.
    """
    deadline = time.monotonic() + wait
    while True:
        out = replay(find_wandb_file(path))
        if out["run"] or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def replay(wandb_file) -> dict:
    """The records of one .wandb file, as read_run returns them."""
    out: dict = {"config": {}, "history": [], "summary": {}, "tables": {},
                 "files": [], "artifacts": [], "run": {}}
    for record in iter_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {"id": run.run_id, "project": run.project, "entity": run.entity,
                          "name": run.display_name, "tags": list(run.tags)}
            _apply(out["config"], run.config.update)
            _apply(out["summary"], run.summary.update)
        elif kind == "config":
            _apply(out["config"], record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(out["summary"], record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict = {}
            _apply(row, record.history.item)
            out["history"].append(row)
        elif kind == "files":
            out["files"].extend(f.path for f in record.files.files)
        elif kind == "artifact":
            art = record.artifact
            out["artifacts"].append({"name": art.name, "type": art.type, "aliases": list(art.aliases)})
    for section in ("config", "summary"):
        out[section].pop("_wandb", None)

    files_dir = wandb_file.parent / "files"
    for row in out["history"]:
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "table-file":
                table_file = files_dir / value["path"]
                if table_file.is_file():
                    table = json.loads(table_file.read_text())
                    out["tables"][key] = {"columns": table["columns"], "data": table["data"]}
    return out
