"""GPU checks of issue 26's fixes, for ``benchmarks/gpu_check.sh``; one JSON object per line.

    python benchmarks/gpu_paths_check.py precision --device cuda      # which AMP dtype, and why
    python benchmarks/gpu_paths_check.py clock --device cuda --size 2048 --workdir D
    torchrun --standalone --nproc-per-node 2 benchmarks/gpu_paths_check.py rank --device cuda

``precision``: ``auto`` per visible GPU (the dtype, the reason, torch's own two answers), the
predictor's resolved precision, and (with 2+ GPUs) whether asking about the last GPU made a
CUDA context on GPU 0. ``clock``: one predict through the device merger; the pipeline's
``model_seconds`` (CUDA events) against the host time of the ``predict_tensor`` calls (what
was reported before) and a second run with a synchronise around every call (the reference).
``rank``: under torchrun, this rank's device for ``--device`` and which GPUs hold a CUDA
context after one batch (only its own should).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _contexts() -> list[bool] | None:
    """Per visible GPU: whether this process holds a (primary) CUDA context on it."""
    import torch

    has = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    if has is None or not torch.cuda.is_available():
        return None
    return [bool(has(i)) for i in range(torch.cuda.device_count())]


def check_precision(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mfaf_cli.devices import cuda_autocast_dtype, resolve_device
    from mfaf_cli.engine.torch_predictor import resolve_precision

    out: dict[str, Any] = {"check": "precision-auto", "device": args.device}
    if torch.cuda.is_available():
        last = torch.device("cuda", torch.cuda.device_count() - 1)
        resolve_precision("auto", last)  # first CUDA call of this process: the last GPU only
        out["contexts_after_asking_the_last_gpu"] = _contexts()
        gpus = []
        for i in range(torch.cuda.device_count()):
            dtype, why = cuda_autocast_dtype(torch.device("cuda", i))
            gpus.append({"index": i, "auto": str(dtype).removeprefix("torch."), "why": why,
                         "torch_is_bf16_supported": torch.cuda.is_bf16_supported(),
                         "torch_native_bf16": torch.cuda.is_bf16_supported(False)})  # fmt: skip
        out["gpus"] = gpus
    device = resolve_device(args.device)
    dtype = resolve_precision("auto", device)
    out["resolved"] = {"device": str(device), "precision": "fp32" if dtype is None else str(dtype)}
    if device.type != "cuda":
        out["resolved"]["why"] = "not a CUDA device: fp32"
    return out


def _scene(workdir: Path, size: int) -> dict[str, Path]:
    from predict_bench import generate_pair

    workdir.mkdir(parents=True, exist_ok=True)
    opt, sar = generate_pair(workdir, size)
    return {"optical": opt, "sar": sar}


def check_clock(args: argparse.Namespace) -> dict[str, Any]:
    """model_seconds (the clock) vs host-return time vs synchronised time, one scene."""
    import torch

    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import predict

    os.environ["MFAF_DEVICE_MERGER"] = "1"  # the asynchronous path (automatic on CUDA)
    inputs = _scene(Path(args.workdir), args.size)
    pr = create_predictor(args.model, engine="torch", device=args.device, precision="auto",
                          modalities=("optical", "sar"), tile=args.tile,
                          threads=1 if args.device == "cpu" else None)  # fmt: skip
    cuda = str(pr.device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    host = {"seconds": 0.0, "calls": 0}
    plain = pr.predict_tensor

    def host_timed(batch: Any) -> Any:
        t0 = time.perf_counter()
        out = plain(batch)
        host["seconds"] += time.perf_counter() - t0
        host["calls"] += 1
        return out

    def synchronised(batch: Any) -> Any:
        sync()
        t0 = time.perf_counter()
        out = plain(batch)
        sync()
        host["seconds"] += time.perf_counter() - t0
        host["calls"] += 1
        return out

    # the generated optical has 4 bands; a model taking fewer gets the first n
    bands = {m.name: list(range(1, m.n_bands + 1)) for m in pr.meta.modalities}
    common = dict(tile=args.tile, overlap=0.25, batch_size=args.batch_size, overwrite=True,
                  progress=False, read_threads=4, bands=bands)  # fmt: skip
    warm = {m.name: np.zeros((args.batch_size, m.n_bands, args.tile, args.tile), np.float32)
            for m in pr.meta.modalities}  # fmt: skip
    pr.predict_tensor(warm)
    sync()
    runs = {}
    for name, wrapper in (("events", host_timed), ("synchronised", synchronised)):
        host["seconds"], host["calls"] = 0.0, 0
        pr.predict_tensor = wrapper  # type: ignore[method-assign]
        res = predict(inputs, Path(args.workdir) / f"map_{name}.tif", predictor=pr, **common)
        runs[name] = {"model_seconds": res.model_seconds, "predict_calls": host["calls"],
                      "call_seconds": round(host["seconds"], 3),
                      "end_to_end_mp_per_s": res.megapixels_per_second}  # fmt: skip
    ev, sy = runs["events"], runs["synchronised"]
    return {
        "check": "model-seconds-clock",
        "device": str(pr.device),
        "precision": pr.precision,
        "size": args.size,
        "cuda_events": cuda,
        # the pipeline's figure (CUDA events on a GPU) vs the same calls' host return time
        # (what model_seconds said before) vs a synchronised run's calls (the reference)
        "model_seconds": ev["model_seconds"],
        "host_return_seconds": ev["call_seconds"],
        "synchronised_seconds": sy["call_seconds"],
        "ratio_model_to_synchronised": (
            round(ev["model_seconds"] / sy["call_seconds"], 3) if sy["call_seconds"] else None
        ),
        "runs": runs,
    }


def check_rank(args: argparse.Namespace) -> dict[str, Any]:
    """This torchrun rank's device for ``--device``, and its CUDA contexts after a batch."""
    import torch

    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.shard import device_for, resolve_shard

    share = resolve_shard(None)
    device = device_for(share, args.device)
    pr = create_predictor(args.model, engine="torch", device=device, precision="auto",
                          modalities=("optical", "sar"), tile=args.tile)  # fmt: skip
    batch = {m.name: np.zeros((2, m.n_bands, args.tile, args.tile), np.float32)
             for m in pr.meta.modalities}  # fmt: skip
    pr(batch)
    if str(pr.device).startswith("cuda"):
        torch.cuda.synchronize(pr.device)
    return {"check": "torchrun-rank-device", "rank": share.index, "local_rank": share.local_rank,
            "asked": args.device, "device": str(pr.device), "precision": pr.precision,
            "contexts": _contexts()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("precision", "clock", "rank"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="mfafnet-s-ombria-water")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workdir", default="gpu-paths-check")
    args = ap.parse_args(argv)
    fn = {"precision": check_precision, "clock": check_clock, "rank": check_rank}[args.what]
    print(json.dumps(fn(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
