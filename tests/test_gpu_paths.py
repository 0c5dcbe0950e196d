"""The CUDA paths, checked without a GPU (issue 26): the device capability queries are mocked,
a DDP divergence runs as two gloo processes, asynchronous device work is faked with a worker
thread standing in for a CUDA stream, and dtypes are asserted under CPU bf16 autocast (whose
lower-precision op list is CUDA's for the matmuls and convolutions involved)."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_geotiff
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mfaf_cli.training.config import TrainConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
#: the dtype tests run under CPU autocast here, and under CUDA's too where there is a GPU
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


# ---- 1: auto precision asks the target GPU whether bf16 is native ------------------------------
class _Props:
    """The fields of ``torch.cuda.get_device_properties`` that the choice reads."""

    def __init__(self, name: str, major: int, minor: int) -> None:
        self.name, self.major, self.minor = name, major, minor


A100, T4 = _Props("NVIDIA A100-SXM4-40GB", 8, 0), _Props("Tesla T4", 7, 5)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, list[Any]]]:
    """``fake_gpus(cuda0, cuda1)``: PyTorch sees these GPUs (current device 0); bf16 tensors
    "work" on every one of them (emulated below 8.0, as on T4 / V100). Returns what was asked:
    the devices whose properties were read, calls of ``current_device`` and bf16 test tensors
    made (each would create a CUDA context on the current device)."""

    def install(*gpus: _Props) -> dict[str, list[Any]]:
        asked: dict[str, list[Any]] = {"properties": [], "current_device": [], "tensor": []}

        def current_device() -> int:
            asked["current_device"].append(0)
            return 0

        def properties(device: Any = None) -> _Props:
            if device is None:
                index = current_device()
            else:
                index = device if isinstance(device, int) else torch.device(device).index
            asked["properties"].append(index)
            return gpus[index]

        def bf16_tensor(device: Any) -> bool:
            asked["tensor"].append(device)
            return True

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
        monkeypatch.setattr(torch.cuda, "current_device", current_device)
        monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", bf16_tensor)
        monkeypatch.setattr(torch.version, "hip", None)
        return asked

    return install


@pytest.mark.parametrize(
    "gpus, want",
    [((A100, T4), (torch.bfloat16, torch.float16)), ((T4, A100), (torch.float16, torch.bfloat16))],
)
def test_auto_precision_is_bf16_only_where_the_target_gpu_has_it_natively(
    fake_gpus: Callable[..., dict[str, list[Any]]], gpus: tuple[_Props, ...], want: tuple
) -> None:
    from mfaf_cli.engine.torch_predictor import resolve_precision

    asked = fake_gpus(*gpus)
    for index, dtype in enumerate(want):
        assert resolve_precision("auto", torch.device("cuda", index)) == dtype, gpus[index].name
    # the target GPU's own properties; no test tensor (a CUDA context) on the current GPU
    assert asked["properties"] == [0, 1]
    assert asked["current_device"] == [] and asked["tensor"] == []
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cuda", 1)) == torch.bfloat16  # as asked


def test_training_amp_on_a_gpu_without_native_bf16_is_fp16_with_grad_scaling(
    fake_gpus: Callable[..., dict[str, list[Any]]], tmp_path: Path
) -> None:
    from dataset_builders import make_ombria

    from mfaf_cli.registry import get_entry, model_divisor
    from mfaf_cli.training.distributed import _Dist
    from mfaf_cli.training.trainer import Trainer

    root = make_ombria(tmp_path / "ombria", n_train=4, n_test=2, size=32)
    cfg = TrainConfig(dataset="ombria", data_root=str(root), model="unet",
                      out=str(tmp_path / "run"), tile=32, batch_size=2, val_fraction=0.5,
                      progress=False, model_config={"base_width": 4}, device="cpu")  # fmt: skip
    trainer = Trainer(cfg, _Dist(), get_entry("unet"), model_divisor("unet", cfg.model_config),
                      Path(cfg.out), time.time())  # fmt: skip
    trainer.setup()
    assert trainer.autocast[0] is False and not trainer.scaler.is_enabled()  # CPU: no AMP
    asked = fake_gpus(A100, T4)
    for index, dtype in enumerate((torch.bfloat16, torch.float16)):
        trainer.device = torch.device("cuda", index)  # this rank's GPU (set up on the CPU)
        trainer._build_optimiser()
        assert trainer.autocast == (True, dtype)
        assert trainer.scaler.is_enabled() == (dtype == torch.float16)
    assert asked["current_device"] == [] and asked["tensor"] == []


# ---- 2: a non-finite loss on one DDP rank stops every rank --------------------------------------
_DIVERGING_RANK = """
import sys
import torch
from mfaf_cli.training import trainer

original = trainer._forward_loss


def poisoned(*args, **kwargs):
    out = original(*args, **kwargs)
    if torch.is_grad_enabled():  # training steps only: this rank's loss overflows
        return (out[0] * float("nan"), *out[1:])
    return out


if sys.argv[1] == "poison":
    trainer._forward_loss = poisoned
from mfaf_cli.cli.main import main

main(sys.argv[2:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_once(tmp_path: Path) -> None:
    """Two gloo processes (no torchrun agent to kill the survivor): rank 1's loss is NaN at
    its first step. Both must exit non-zero with the divergence message within seconds,
    rank 0 included, instead of waiting in the gradient all-reduce for a peer that left."""
    from dataset_builders import make_ombria

    root = make_ombria(tmp_path / "ombria", n_train=8, n_test=2, size=32)
    script = tmp_path / "rank.py"
    script.write_text(_DIVERGING_RANK)
    args = ["train", "--dataset", "ombria", "--data-root", str(root), "--model", "unet",
            "--model-opt", "base_width=4", "-o", str(tmp_path / "run"), "--tile", "32",
            "--batch-size", "2", "--val-fraction", "0.25", "--epochs", "1", "--device", "cpu",
            "-q"]  # fmt: skip
    base = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", MPLBACKEND="Agg")  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "poison" if rank == 1 else "clean", *args],
            env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    ends: list[float] = []
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            ends.append(time.monotonic())
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        pytest.fail("a rank still waits for its peer after 120 s (the collective hangs)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (code, err) in enumerate(results):
        assert code != 0, f"rank {rank} exited 0"
        last = [x for x in err.strip().splitlines() if x][-1]
        assert "training diverged at epoch 1 step 0 (loss non-finite on rank 1 of 2)" in last, err
    assert abs(ends[1] - ends[0]) < 20  # both at the same step, not one after a timeout


# ---- 3: under torchrun, cuda means the local rank's GPU -----------------------------------------
def test_torchrun_ranks_map_cuda_to_their_local_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mfaf_cli.engine import base
    from mfaf_cli.pipeline.batch import _my_scenes
    from mfaf_cli.pipeline.shard import device_for, resolve_shard

    monkeypatch.setattr(base, "cuda_requested", lambda device: True)
    rank1 = resolve_shard(None, {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    for asked, want in [("cuda", "cuda:1"), (" CUDA ", "cuda:1"), ("auto", "cuda:1"),
                        ("cuda:0", "cuda:0"), ("cuda:3", "cuda:3"), ("cpu", "cpu")]:  # fmt: skip
        assert device_for(rank1, asked) == want, asked
    # other launchers give no local rank: the device stays as asked
    slurm = resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert device_for(slurm, "cuda") == "cuda" and device_for(slurm, "auto") == "auto"
    # predict --batch under torchrun: this rank's scenes go to this rank's GPU
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    scenes = [f"scene-{i}" for i in range(5)]
    for asked in ("cuda", "auto"):
        mine, device, share = _my_scenes(scenes, None, asked)  # type: ignore[arg-type]
        assert mine == ["scene-1", "scene-3"] and device == "cuda:1" and share.index == 1


# ---- 4: model seconds include device work that finishes after predict returns -------------------
class FakeStream:
    """One worker thread running queued work in order, as a CUDA stream runs kernels after
    the host call that queued them has returned."""

    def __init__(self) -> None:
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._work.get()) is not None:
            job()

    def enqueue(self, job: Callable[[], None]) -> None:
        self._work.put(job)

    def close(self) -> None:
        self._work.put(None)
        self._thread.join()


class FakeEvent:
    """``torch.cuda.Event``'s interface on :class:`FakeStream`: stamped when the stream
    reaches it; ``elapsed_time`` in milliseconds, as CUDA's."""

    def __init__(self, stream: FakeStream) -> None:
        self._done = threading.Event()
        self._at = 0.0
        stream.enqueue(self._stamp)

    def _stamp(self) -> None:
        self._at = time.perf_counter()
        self._done.set()

    def query(self) -> bool:
        return self._done.is_set()

    def synchronize(self) -> None:
        self._done.wait()

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.query() and end.query(), "elapsed_time before both events completed"
        return (end._at - self._at) * 1000.0


class AsyncPredictor:
    """A torch predictor whose device is busy ``work`` seconds per batch after
    ``predict_tensor`` returned (the probabilities themselves are ready at once, so the merge
    stays correct without a real stream)."""

    def __init__(self, inner: Any, work: float) -> None:
        self.inner, self.work, self.calls = inner, work, 0
        self.meta, self.device, self.engine = inner.meta, "cpu", "torch"
        self.precision, self.stream = "fp32", FakeStream()

    def __call__(self, batch: Any) -> np.ndarray:
        raise AssertionError("the device merger path asks for device tensors")

    def predict_tensor(self, batch: Any) -> torch.Tensor:
        self.calls += 1
        out = self.inner.predict_tensor(batch)
        self.stream.enqueue(lambda: time.sleep(self.work))
        return out

    def device_event(self) -> FakeEvent:
        return FakeEvent(self.stream)


def test_model_seconds_cover_device_work_finishing_after_predict_returns(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import predict

    rng = np.random.default_rng(5)
    inputs = {
        "optical": write_geotiff(tmp_path / "s2.tif", rng.integers(1, 3000, (4, 64, 80), "int16")),
        "sar": write_geotiff(tmp_path / "s1.tif", rng.normal(-12, 3, (1, 64, 80)).astype("f4")),
    }
    inner = create_predictor(str(ckpt), engine="torch", device="cpu", precision="fp32")
    assert inner.device_event() is None  # CPU calls return finished work: host time
    fake = AsyncPredictor(inner, work=0.15)
    monkeypatch.setenv("MFAF_DEVICE_MERGER", "1")
    try:
        res = predict(inputs, tmp_path / "map.tif", predictor=fake, tile=32, overlap=0.25,
                      batch_size=4, progress=False, read_threads=1)  # fmt: skip
    finally:
        fake.stream.close()
    busy = fake.calls * fake.work
    assert fake.calls >= 3
    # each batch's device time (0.15 s) is counted, though predict_tensor returned at once;
    # the upper bound: the forwards themselves (tiny U-Net, 4 tiles of 32²) are milliseconds
    assert busy * 0.95 <= res.model_seconds <= busy + 0.1 * fake.calls, (res.model_seconds, busy)


# ---- 5: WSL2's /dev/dxg counts as a GPU ---------------------------------------------------------
@pytest.mark.parametrize(
    "nodes, no_gpu",
    [((), True), (("nvidiactl",), True), (("nvidia0", "nvidiactl"), False), (("dxg",), False)],
)
def test_the_gpu_probe_sees_nvidia_and_wsl2_device_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: tuple[str, ...], no_gpu: bool
) -> None:
    from mfaf_cli.engine import base

    for name in nodes:
        (tmp_path / name).touch()
    monkeypatch.setattr(base, "DEV_DIR", tmp_path)
    monkeypatch.setattr(sys, "platform", "linux")
    assert base._no_nvidia_device() is no_gpu
    monkeypatch.setattr(sys, "platform", "win32")  # no /dev to read: ask PyTorch
    assert base._no_nvidia_device() is False


# ---- 6, 7: float32 where autocast would round to half -------------------------------------------
class HalfOps(TorchDispatchMode):
    """Records the non-view ops that produce a half-precision tensor (after autocast's casts),
    and every op's output dtype by name."""

    def __init__(self) -> None:
        super().__init__()
        self.half: list[str] = []
        self.dtypes: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            name = func.overloadpacket.__name__
            self.dtypes.setdefault(name, set()).add(out.dtype)
            if out.dtype in (torch.float16, torch.bfloat16) and not func.is_view:
                self.half.append(name)
        return out


class TwoBranch(nn.Module):
    """Two 1×1 encoders, a head and the aux outputs the alignment losses read."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_a, self.enc_b = nn.Conv2d(2, 16, 1), nn.Conv2d(1, 16, 1)
        self.head = nn.Conv2d(32, 3, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, return_aux: bool = False) -> Any:
        from mfaf_cli.models.losses import variance_hinge

        f_a, f_b = self.enc_a(a), self.enc_b(b)
        logits = self.head(torch.cat([f_a, f_b], 1))
        if not return_aux:
            return logits
        z_a, z_b = F.normalize(f_a, dim=1), F.normalize(f_b, dim=1)
        return logits, {"deep": (f_a, f_b), "align": (z_a, z_b, variance_hinge(z_a))}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["class", "rbf", "linear", "paired"])
def test_alignment_losses_run_in_float32_under_autocast(
    kind: str, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mfaf_cli.models.losses import feature_mmd, mmd_loss, valid_samples
    from mfaf_cli.training import step as trainer

    torch.manual_seed(0)
    model = TwoBranch().to(device)
    batch = {
        "inputs": {"optical": torch.randn(2, 2, 16, 16), "sar": torch.randn(2, 1, 16, 16)},
        "mask": torch.randint(0, 3, (2, 16, 16)),
    }
    cfg = TrainConfig(dataset="ombria", data_root="-", model="mfafnet-s", out="-", mmd=kind)
    original, seen = trainer._alignment, {}

    def recorded(aux: dict, *args: Any) -> Any:
        with HalfOps() as ops:
            out = original(aux, *args)
        seen.update(aux=aux, ops=ops, autocast=torch.is_autocast_enabled(device))
        return out

    monkeypatch.setattr(trainer, "_alignment", recorded)
    _, _, mmd, _, mask, _ = trainer._forward_loss(
        model, batch, ("optical", "sar"), torch.device(device), cfg, 1.0, 1, 255,
        (True, torch.bfloat16),
    )  # fmt: skip
    assert seen["aux"]["deep"][0].dtype == torch.bfloat16  # the model did run under autocast
    assert not seen["autocast"] and seen["ops"].half == [], seen["ops"].half
    assert mmd.dtype == torch.float32
    # the loss equals a float64 computation on the same (bf16) features, to float32 rounding
    aux = {k: tuple(t.detach().double() for t in v) for k, v in seen["aux"].items()}
    if kind == "rbf":
        f_a, f_b = aux["deep"]
        valid = valid_samples(mask, tuple(f_a.shape[-2:]), 255)
        torch.manual_seed(0)  # the same random subset as none is drawn (256 px < 1024)
        want = feature_mmd(f_a, f_b, valid)
    else:
        z_a, z_b, hinge = aux["align"]
        want = mmd_loss(z_a, z_b, kind=kind, labels=mask, ignore_index=255) + hinge
    assert float(mmd.detach()) == pytest.approx(float(want), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", ["per_tap", "batched"])
def test_deformable_offsets_stay_float32_under_autocast(sampling: str, device: str) -> None:
    from mfaf_cli.models.comix import DCN

    torch.manual_seed(0)
    dcn = DCN(8, 4, ndim=2, sampling=sampling).eval().to(device)
    with torch.no_grad():  # offsets of several pixels, as a trained layer gives
        nn.init.normal_(dcn.offset.weight, std=2.0)
        nn.init.normal_(dcn.offset.bias, std=2.0)
    offsets: list[torch.dtype] = []
    dcn.offset.register_forward_hook(lambda m, i, out: offsets.append(out.dtype))
    x = torch.randn(1, 8, 12, 12, device=device)
    with torch.inference_mode():
        ref = dcn(x)
        with torch.autocast(device, dtype=torch.bfloat16), HalfOps() as ops:
            got = dcn(x)
    # per-tap: the offsets are a batched matmul of q; batched: the offset layer's convolution
    made = ops.dtypes.get("baddbmm", set()) if sampling == "per_tap" else set(offsets[1:])
    assert made == {torch.float32}, made
    assert got.shape == ref.shape and torch.isfinite(got).all()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
