"""Checkpoint I/O against its limits: raw sequential I/O, torch.save/load and the SDK.

Every contender writes the same bytes (a model state of ``--size-mb``) to the same medium
with the same durability: files are fsynced before the clock stops. Before every read the
files' pages are dropped from the page cache (``posix_fadvise(DONTNEED)``), so reads come
from the medium, not from memory. A memory-backed filesystem (/dev/shm) is measured too: it
removes the device and exposes serialisation and checksum cost. Figures are medians over
``--repeats``; the last line printed is one JSON object with every figure and ratio. On
virtual disks the host's cache still serves some reads, so disk read figures are noisy: use
more repeats to trust small differences.

    python benchmarks/sdk_io.py --size-mb 2048 --repeats 3

With ``--ranks N`` (N > 1) N gloo processes each hold 1/N of the state, as a row-sharded
DTensor per tensor, and every contender runs on all ranks at once between two barriers: raw
writes of each rank's bytes to its own file, the SDK's sharded save, torch's DCP
``FileSystemWriter`` and the SDK's DCP writer; loads likewise (``FileSystemReader``, the SDK's
verifying reader, the SDK's sharded restore). Throughput counts the bytes of all ranks.

    python benchmarks/sdk_io.py --ranks 2 --size-mb 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from ckpt_operator.api.names import Format
from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk.state import MODEL_FILE, load_tensors, read_files
from ckpt_operator.sdk.tensorfile import tensor_bytes
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.storage.store import Store

READ_CHUNK = 64 << 20


def make_model(size_bytes: int, tensors: int, device: str) -> nn.Module:
    model = nn.ParameterDict()
    per = size_bytes // tensors // 4
    for i in range(tensors):
        model[f"layer{i}"] = nn.Parameter(torch.randn(per, device=device))
    return model


def drop_cache(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_write(model: nn.Module, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for tensor in model.state_dict().values():
            view = tensor_bytes(tensor.cpu())
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_read(path: Path) -> None:
    buffer = torch.empty(path.stat().st_size, dtype=torch.uint8)
    view = buffer.numpy().data
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < len(view):
            n = f.readinto(view[done : done + READ_CHUNK])
            if not n:
                break
            done += n


def torch_save(model: nn.Module, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(model.state_dict(), f)
        f.flush()
        os.fsync(f.fileno())


def sdk_load(store: Store, rel: str, verify: bool) -> None:
    _, buffers = read_files(store, rel, verify=verify)
    load_tensors(buffers[MODEL_FILE], MODEL_FILE)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_medium(root: Path, model: nn.Module, size: int, repeats: int) -> dict[str, float]:
    """Median GB/s of each operation on the medium holding ``root``."""
    times: dict[str, list[float]] = {}

    def record(name: str, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> None:
        if before is not None:
            before()
        times.setdefault(name, []).append(timed(fn))

    raw, pt = root / "raw.bin", root / "state.pt"
    for rep in range(repeats):
        record("raw_write", partial(raw_write, model, raw))
        record("raw_read", partial(raw_read, raw), partial(drop_cache, raw))
        raw.unlink()
        record("torch_save", partial(torch_save, model, pt))
        record("torch_load", partial(torch.load, pt, weights_only=True), partial(drop_cache, pt))
        pt.unlink()
        fmt: Format
        for fmt in ("dir", "tar"):
            store = Store.from_uri(f"file://{root}/run-{fmt}")
            manager = CheckpointManager(store, format=fmt)
            rel = CheckpointName(rep, 0, fmt).path
            record(f"sdk_save_{fmt}", partial(manager.save, rep, model=model))
            for verify in (True, False) if rep % 2 else (False, True):  # alternate: no order bias
                record(
                    f"sdk_load_{fmt}_{'verify' if verify else 'noverify'}",
                    partial(sdk_load, store, rel, verify),
                    partial(drop_cache, Path(store.resolve(rel))),
                )
            store.remove(rel)
    return {name: size / statistics.median(ts) / 1e9 for name, ts in times.items()}


def ratios(gbps: dict[str, float]) -> dict[str, float]:
    load_v, load_nv = gbps["sdk_load_dir_verify"], gbps["sdk_load_dir_noverify"]
    return {
        "save_vs_raw": gbps["sdk_save_dir"] / gbps["raw_write"],
        "save_vs_torch": gbps["sdk_save_dir"] / gbps["torch_save"],
        "load_vs_raw": load_v / gbps["raw_read"],
        "load_vs_torch": load_v / gbps["torch_load"],
        "verify_overhead": load_nv / load_v - 1,
        "tar_vs_dir_save": gbps["sdk_save_tar"] / gbps["sdk_save_dir"],
        "tar_vs_dir_load": gbps["sdk_load_tar_verify"] / load_v,
        "tar_vs_dir": min(
            gbps["sdk_save_tar"] / gbps["sdk_save_dir"], gbps["sdk_load_tar_verify"] / load_v
        ),
        "torch_save_vs_raw": gbps["torch_save"] / gbps["raw_write"],
    }


def _rank_bench(root: Path, local: nn.Module, repeats: int) -> dict[str, list[float]]:
    """Seconds of each contender on all ranks at once (barrier to barrier), per repeat."""
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    sharded = {
        k: DTensor.from_local(v.detach(), mesh, [Shard(0)]) for k, v in local.state_dict().items()
    }
    manager = CheckpointManager(f"file://{root}/sdk", run="bench")
    times: dict[str, list[float]] = {}

    def record(name: str, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> None:
        if before is not None and rank == 0:
            before()
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        times.setdefault(name, []).append(time.perf_counter() - start)

    for rep in range(repeats):
        raw, dcp_dir = root / f"raw-{rank}.bin", root / f"dcp-{rep}"
        record("raw_write", partial(raw_write, local, raw))
        record("raw_read", partial(raw_read, raw), partial(drop_cache, root))
        record("sdk_save", partial(manager.save, rep, model=local))
        ckpt = root / "sdk" / CheckpointName(rep, 0, "dir").path
        restore = partial(manager.restore, model=local, restore_rng=False)
        record("sdk_load", restore, partial(drop_cache, ckpt))
        writer = FileSystemWriter(dcp_dir)
        record("dcp_fs_save", partial(dcp_save, sharded, storage_writer=writer))
        reader = FileSystemReader(dcp_dir)
        stock_load = partial(dcp_load, sharded, storage_reader=reader)
        record("dcp_fs_load", stock_load, partial(drop_cache, dcp_dir))
        record("sdk_dcp_save", partial(manager.save_dcp, rep, sharded))
        ours = root / "sdk" / CheckpointName(rep, 0, "dcp").path
        record("sdk_dcp_load", partial(manager.restore_dcp, sharded), partial(drop_cache, ours))
        dist.barrier()
        if rank == 0:
            for done in (ckpt, ours, dcp_dir):
                shutil.rmtree(done)
        raw.unlink()
    return times


def _rank_main(rank: int, world: int, port: int, args: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    local = make_model((args["size_mb"] << 20) // world, args["tensors"], "cpu")
    found: dict[str, dict[str, list[float]]] = {}
    for medium, parent in args["media"].items():
        root = Path(parent) / f".sdk-io-ranks-{port}"
        if rank == 0:
            root.mkdir()
        dist.barrier()
        try:
            found[medium] = _rank_bench(root, local, args["repeats"])
        finally:
            dist.barrier()
            if rank == 0:
                shutil.rmtree(root, ignore_errors=True)
    if rank == 0:
        Path(out).write_text(json.dumps(found))
    dist.destroy_process_group()


def bench_ranks(args: argparse.Namespace, media: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Median GB/s of each contender per medium, measured by ``args.ranks`` processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    size = (args.size_mb << 20) // args.ranks // args.tensors // 4 * 4 * args.tensors * args.ranks
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        shared = {k: v for k, v in vars(args).items() if k in ("size_mb", "tensors", "repeats")}
        shared["media"] = {k: str(v) for k, v in media.items()}
        mp.start_processes(_rank_main, (args.ranks, port, shared, out.name), nprocs=args.ranks)
        found = json.loads(Path(out.name).read_text())
    return {
        medium: {name: size / statistics.median(ts) / 1e9 for name, ts in times.items()}
        for medium, times in found.items()
    }


def rank_ratios(gbps: dict[str, float]) -> dict[str, float]:
    return {
        "save_vs_raw": gbps["sdk_save"] / gbps["raw_write"],
        "load_vs_raw": gbps["sdk_load"] / gbps["raw_read"],
        "save_vs_dcp": gbps["sdk_save"] / gbps["dcp_fs_save"],
        "load_vs_dcp": gbps["sdk_load"] / gbps["dcp_fs_load"],
        "dcp_writer_vs_dcp": gbps["sdk_dcp_save"] / gbps["dcp_fs_save"],
        "dcp_reader_vs_dcp": gbps["sdk_dcp_load"] / gbps["dcp_fs_load"],
    }


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="state size (default 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tensors", type=int, default=32, help="tensors in the state")
    parser.add_argument("--device", default="cpu", help="where the state lives: cpu or cuda")
    parser.add_argument("--ranks", type=int, default=1, help="gloo processes sharing the state")
    parser.add_argument(
        "--disk-dir",
        type=Path,
        default=here,
        help="a directory on the project disk (a scratch dir is made inside)",
    )
    parser.add_argument(
        "--shm-dir",
        type=Path,
        default=Path("/dev/shm"),
        help="a memory-backed directory; '' to skip",
    )
    args = parser.parse_args()

    media = {"disk": args.disk_dir}
    if str(args.shm_dir) not in ("", ".") and args.shm_dir.is_dir():
        media["shm"] = args.shm_dir
    if args.ranks > 1:
        size = args.size_mb << 20
        measured = bench_ranks(args, media)
        ratio_of: Callable[[dict[str, float]], dict[str, float]] = rank_ratios
    else:
        torch.manual_seed(0)
        model = make_model(args.size_mb << 20, args.tensors, args.device)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        measured = {}
        for medium, parent in media.items():
            scratch = Path(tempfile.mkdtemp(prefix=".sdk-io-", dir=parent))
            try:
                measured[medium] = bench_medium(scratch, model, size, args.repeats)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        ratio_of = ratios
    results: dict[str, Any] = {
        "size_bytes": size,
        "repeats": args.repeats,
        "device": args.device,
        "ranks": args.ranks,
        "media": {},
    }
    print(
        f"state: {size / 1e9:.2f} GB in {args.tensors} tensors over {args.ranks} rank(s) on "
        f"{args.device}; medians of {args.repeats} repeats, GB/s"
    )
    for medium, gbps in measured.items():
        results["media"][medium] = {"gbps": gbps, **ratio_of(gbps)}
        print(f"\n[{medium}: {media[medium]}]")
        for name, value in gbps.items():
            print(f"  {name:24s} {value:7.3f} GB/s")
        for name, value in ratio_of(gbps).items():
            print(f"  {name:24s} {value:7.3f}")
    results.update({k: v for k, v in results["media"]["disk"].items() if k != "gbps"})
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
