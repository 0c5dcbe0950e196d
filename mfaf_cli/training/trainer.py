"""A training run, as a table of contents: AdamW + poly/cosine, CE (+ MMD for MFAFNet), AMP,
DDP, exact resume. Each part lives in its own room of ``training/``:

- ``loading.py``: the datasets of a run and their loaders (workers kept between epochs);
- ``step.py``: one batch's loss; ``alignment.py``: the alignment (MMD) loss and monitors;
- ``optim.py``: the optimiser, the LR schedule and AMP;
- ``checkpoint.py``: checkpoint and resume state (what ``--resume`` checks and restores);
- ``records.py``: the run folder, metrics.jsonl / metrics.csv, curves, summaries;
- this module: the loop (:func:`train`, :class:`Trainer`).

Run directory (created only after every input has been validated):

- ``last.safetensors`` + ``last_state.pt`` every epoch (weights with their ModelMeta; optimizer,
  scheduler, epoch, RNG states as plain tensors/dicts, loaded with ``weights_only=True``),
- ``best.safetensors`` (best validation mIoU), ``metrics.jsonl`` / ``metrics.csv`` (one row per
  epoch), ``curves.png``, ``config.toml`` (the resolved configuration).

Augmentation and data order derive from ``(seed, epoch, index)`` rather than from hidden RNG
state, so ``--resume`` reproduces an uninterrupted run bit for bit (tested), and results do
not depend on the number of loader workers. Multi-GPU / multi-node runs go through
``torchrun``: DistributedDataParallel, a DistributedSampler, rank-0 logging and checkpoints.
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfaf_cli.errors import DatasetError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.registry import ModelEntry
from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion
from mfaf_cli.training.alignment import (  # noqa: F401  (re-exported)
    _alignment,
    _monitor_columns,
    _warn_if_collapsed,
)
from mfaf_cli.training.checkpoint import (  # noqa: F401  (re-exported)
    Progress,
    Resumed,
    _check_resume_meta,
    _load_state,
    _resume_paths,
    _rng_state,
    _set_rng_state,
    model_record,
    read_resume,
    restore,
    resume_state,
    save_epoch,
    val_summary,
)
from mfaf_cli.training.config import (  # noqa: F401  (re-exported: the public training API)
    MMD_KINDS,
    SCHEDULES,
    TrainConfig,
    _parse_config_text,
    _toml_value,
    config_to_toml,
    load_config_file,
    validate_config,
)
from mfaf_cli.training.distributed import (
    _all_reduce,
    _barrier,
    _Dist,
    _init_distributed,
    _resolve_device,
    _shutdown,
    nonfinite_ranks,
)
from mfaf_cli.training.loading import (
    TrainLoader,
    _train_loader,
    _val_loader,
    close_loader,
    open_splits,
    resolve_workers,
)
from mfaf_cli.training.optim import (  # noqa: F401  (re-exported)
    Optimiser,
    _load_scheduler,
    _LRLambda,
    build_optimiser,
    lr_factor,
)
from mfaf_cli.training.records import (  # noqa: F401  (re-exported)
    _RUN_FILES,
    BEST_NAME,
    LAST_NAME,
    STATE_NAME,
    TrainResult,
    _check_run_dir,
    _print_epoch,
    _read_history,
    _write_history,
    epoch_row,
    plot_curves,
    prepare_run_dir,
    split_summaries,
)
from mfaf_cli.training.step import _forward_loss, _LossOut, pad_batch  # noqa: F401


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        it,
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``; see the module docstring for outputs."""
    from mfaf_cli.registry import get_entry, model_divisor
    from mfaf_cli.tiling.windows import check_tile

    t_start = time.time()
    validate_config(cfg)
    entry = get_entry(cfg.model)
    divisor = model_divisor(cfg.model, cfg.model_config)
    check_tile(cfg.tile, divisor, cfg.model)
    run_dir = Path(cfg.out)
    _check_run_dir(cfg, run_dir)
    d = _init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, d, entry, divisor, run_dir, t_start)
        trainer.setup()
        return trainer.fit()
    finally:
        _shutdown(d)


class Trainer:
    """One training run: :meth:`setup` validates every input and builds the model, optimiser
    and schedule (restoring them on ``--resume``); :meth:`fit` runs the epochs, each one
    :meth:`train_epoch`, :meth:`validate`, then checkpoint and log on rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        d: _Dist,
        entry: ModelEntry,
        divisor: int,
        run_dir: Path,
        t_start: float,
    ) -> None:
        self.cfg, self.d, self.entry, self.divisor = cfg, d, entry, divisor
        self.run_dir, self.t_start = run_dir, t_start
        self.modalities: tuple[str, ...] = tuple(entry.modalities)
        self.device = _resolve_device(cfg.device, d)
        self.loader: TrainLoader | None = None  # built at the first epoch, kept for the run
        self.resumed: Resumed | None = None  # --resume
        self.progress = Progress()
        self.created = False
        self.mmd_used = cfg.mmd in entry.alignment_losses
        self.window_weights: np.ndarray | None = None  # --sampling balanced
        self.class_weight: torch.Tensor | None = None  # --class-weights
        self.imbalance: dict[str, Any] = {}
        self.init_record: dict[str, Any] | None = None  # --init

    # ---- where the run stands (checkpoint.Progress) -----------------------------------------
    @property
    def start_epoch(self) -> int:
        return self.progress.start_epoch

    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def best_miou(self) -> float:
        return self.progress.best_miou

    @property
    def best_epoch(self) -> int:
        return self.progress.best_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.progress.history

    @property
    def resume_meta(self) -> ModelMeta | None:
        return self.resumed.meta if self.resumed else None

    @property
    def resume_ckpt(self) -> Path | None:
        return self.resumed.ckpt if self.resumed else None

    # ---- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first epoch; writes into the run directory only at the end."""
        self._open_datasets()
        self.rules = self._check_rules()
        if self.cfg.resume:
            self.resumed = read_resume(self.cfg, self.train_ds)
        self._plan_imbalance()
        # ---- everything validated: from here on we may write into run_dir ----
        self._set_normalisation()
        self._seed()
        self._build_model()
        self._build_optimiser()
        if self.resumed is not None:
            self.progress = restore(self.resumed, self.optimiser, self.cfg)
        if self.d.main:
            self.created = prepare_run_dir(
                self.cfg, self.run_dir, self.resume_ckpt, self.resumed is not None
            )
        _barrier(self.d)

    def _open_datasets(self) -> None:
        show = self.cfg.progress and self.d.main
        self.train_ds, self.val_ds, self.splits = open_splits(
            self.cfg, self.entry.modalities, self.d, show=show
        )
        self.k, self.ignore_index = self.train_ds.num_classes, self.train_ds.ignore_index

    def _check_rules(self) -> tuple[tuple[str, str], ...]:
        """``--rule NAME=EXPR`` (or the config file's ``rules``) and the scene list's ``rules``:
        parsed and checked against the bands the model will take; a flag replaces the list's
        rule of the same name."""
        from mfaf_cli.applicability import Rule, checked_rules

        given = list(self.cfg.rules)
        names = {Rule.parse(t).name for t in given}
        listed = [t for t in getattr(self.train_ds, "list_rules", []) if Rule.parse(t).name
                  not in names]  # fmt: skip
        specs = self.train_ds.modality_specs()
        rules = checked_rules(listed + given, specs, self.cfg.model)
        return tuple((r.name, r.expr) for r in rules)

    def _plan_imbalance(self) -> None:
        """Window sampling weights and CE class weights (one histogram pass when needed)."""
        from mfaf_cli.training.sampling import imbalance_plan

        cfg = self.cfg
        ww, cw, self.imbalance = imbalance_plan(
            cfg.sampling, cfg.class_weights, self.train_ds, self.train_ds.classes, self.ignore_index
        )
        if ww is not None and not ww.sum() > 0:
            raise DatasetError("--sampling balanced: no training window holds a labelled pixel")
        self.window_weights = ww
        if cw is not None:
            self.class_weight = torch.as_tensor(cw, dtype=torch.float32, device=self.device)

    def _set_normalisation(self) -> None:
        if self.resume_meta is not None:
            norms = {m.name: m.normalisation for m in self.resume_meta.modalities}
            self.train_ds.ranges = {
                m.name: (m.range_low, m.range_high, m.range_open)
                for m in self.resume_meta.modalities
                if m.range_low is not None and m.range_high is not None
            }
        else:
            norms = self.train_ds.compute_normalisation()
        self.train_ds.set_normalisation(norms)
        self.val_ds.set_normalisation(norms)

    def _seed(self) -> None:
        seed = self.cfg.seed
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)

    def _build_model(self) -> None:
        from mfaf_cli.io.weights import load_checkpoint
        from mfaf_cli.registry import create_model

        cfg, device = self.cfg, self.device
        model = create_model(cfg.model, self.train_ds.in_channels, self.k, **cfg.model_config)
        if self.resume_ckpt is not None:
            loaded, _ = load_checkpoint(self.resume_ckpt)
            model.load_state_dict(loaded.state_dict())
            del loaded
        elif cfg.init:
            from mfaf_cli.training.finetune import init_from

            self.init_record = init_from(
                model, cfg.init, cfg.model, cfg.model_config, self.train_ds.classes
            )
        model.to(device)
        self.model: nn.Module = model
        self.net: nn.Module = model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                # the projection head is unused without a projected MMD kind
                find_unused_parameters=cfg.mmd in ("none", "rbf"),
            )

    def _build_optimiser(self) -> None:
        """AdamW, the LR schedule over every step of ``cfg.epochs``, and AMP (CUDA only)."""
        cfg = self.cfg
        steps = len(_train_loader(self.train_ds, cfg, 0, self.d, self.window_weights))
        if cfg.max_batches is not None:
            steps = min(steps, cfg.max_batches)
        if steps < 1:
            raise DatasetError("the train split yields no batch; lower --batch-size")
        self.steps_per_epoch = steps
        self.total_steps = cfg.epochs * steps
        o = self.optimiser = build_optimiser(self.model, cfg, self.total_steps, self.device)
        self.opt, self.sched, self.scaler, self.autocast = o.opt, o.sched, o.scaler, o.autocast
        self.use_amp = o.autocast[0]

    # ---- checkpoint ------------------------------------------------------------------------
    def make_meta(self, epoch_done: int, val_metrics: dict[str, Any], wall: float) -> ModelMeta:
        """The ModelMeta stored with each checkpoint (:func:`checkpoint.model_record`)."""
        return model_record(self, epoch_done, val_metrics, wall)

    def save(self, row: dict[str, Any], vm: dict[str, Any], improved: bool, wall: float) -> None:
        """Rank 0: last (and best) checkpoint, the resume state and the history files."""
        epoch_done = int(row["epoch"])
        meta = self.make_meta(epoch_done, val_summary(row, vm), wall)
        state = resume_state(self.cfg.model, epoch_done, self.progress, self.optimiser, wall)
        save_epoch(self.run_dir, self.model, meta, improved, state, self.history)

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the remaining epochs; a failure before the first epoch finished removes a run
        directory this run created."""
        cfg, d = self.cfg, self.d
        completed = self.start_epoch
        val_loader = None
        try:
            val_loader = _val_loader(self.val_ds, cfg, d, persist=True)
            for epoch in range(self.start_epoch, cfg.epochs):
                self.run_epoch(epoch, val_loader)
                completed = epoch + 1
                _barrier(d)
                if cfg.stop_after is not None and completed - self.start_epoch >= cfg.stop_after:
                    break
        except BaseException:
            if d.main and self.created and completed == self.start_epoch:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:  # the workers of both loaders persist between epochs, not after the run
            if self.loader is not None:
                self.loader.close()
                self.loader = None
            if val_loader is not None:
                close_loader(val_loader)
        if d.main:
            self.calibrate()
        _barrier(d)
        best = self.run_dir / BEST_NAME
        return TrainResult(
            run_dir=self.run_dir,
            epochs=completed,
            best_epoch=self.best_epoch,
            best_miou=self.best_miou,
            wall_time_s=self.progress.wall_before + (time.time() - self.t_start),
            last=self.run_dir / LAST_NAME,
            best=best if best.exists() else None,
            splits=self.splits,
        )

    def calibrate(self) -> dict[str, Any] | None:
        """Rank 0, after the last epoch: fit the temperature of ``best.safetensors`` on the
        validation split (all of it, this process alone) and store it in that record."""
        from torch.utils.data import DataLoader, default_collate

        from mfaf_cli.io.weights import load_checkpoint, save_checkpoint
        from mfaf_cli.training.temperature import collect, fit_report, with_temperature

        best = self.run_dir / BEST_NAME
        if not best.exists() or len(self.val_ds) == 0:
            return None
        cfg = self.cfg
        model, meta = load_checkpoint(best, device=self.device)
        model.eval()
        loader = DataLoader(self.val_ds, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=resolve_workers(cfg.num_workers),
                            collate_fn=default_collate)  # fmt: skip

        def pairs() -> Any:
            with torch.inference_mode():
                for batch in itertools.islice(loader, cfg.max_val_batches):
                    out = self._forward(model, batch, 0.0, want_aux=False)
                    yield out[3].float().cpu().numpy(), out[4].cpu().numpy()

        z, y = collect(pairs(), self.ignore_index, cfg.seed)
        report = fit_report(z, y, f"val split ({len(self.val_ds)} items, best epoch)")
        save_checkpoint(model, with_temperature(meta, report), best)
        b, a = report["before"], report["after"]
        if not cfg.progress:  # -q; the fit is in the checkpoint's record (`mfaf info`)
            return report
        print(f"calibrated {best.name}: temperature {report['temperature']:.3f} (val NLL "
              f"{b['nll']:.4f} -> {a['nll']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f})",
              file=sys.stderr, flush=True)  # fmt: skip
        return report

    def run_epoch(self, epoch: int, val_loader: Any) -> None:
        """Train, validate, update the best score, then checkpoint and log on rank 0."""
        t0 = time.time()
        sums = self.train_epoch(epoch)
        t_train = time.time() - t0
        cm, val_loss = self.validate(val_loader)
        vm = metrics_from_confusion(cm, [c.name for c in self.train_ds.classes])
        miou = vm["miou"] if math.isfinite(vm["miou"]) else -1.0
        improved = miou > self.best_miou
        if improved:
            self.progress.best_miou, self.progress.best_epoch = miou, epoch + 1
        wall = self.progress.wall_before + (time.time() - self.t_start)
        lr = self.sched.get_last_lr()[0]
        row = epoch_row(epoch, self.global_step, lr, sums, vm, val_loss, t_train, t0)
        self.history.append(row)
        _warn_if_collapsed(row, epoch + 1)
        if self.d.main:
            self.save(row, vm, improved, wall)
            if self.cfg.progress:
                _print_epoch(row, vm, self.cfg.epochs, improved)

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One pass over the training loader; the per-epoch sums, reduced over processes:
        loss, ce, mmd, batches, embedding cosine, head-free MMD², monitored batches."""
        cfg, d = self.cfg, self.d
        self.net.train()
        if cfg.freeze_encoder and epoch in (self.start_epoch, cfg.freeze_encoder):
            from mfaf_cli.training.finetune import set_encoder_frozen

            set_encoder_frozen(self.model, epoch < cfg.freeze_encoder)
        if self.loader is None:  # one loader, its workers kept between epochs
            self.loader = TrainLoader(self.train_ds, cfg, d, self.window_weights, self.device)
        loader = self.loader.epoch(epoch)
        sums = torch.zeros(7, dtype=torch.float64)
        bar = _progress(
            itertools.islice(loader, cfg.max_batches),
            self.steps_per_epoch,
            f"epoch {epoch + 1}/{cfg.epochs}",
            cfg.progress and d.main,
        )
        for batch in bar:
            sums += self._train_step(batch, epoch, bar)
        return _all_reduce(sums.to(self.device), d).cpu()

    def _forward(
        self,
        net: nn.Module,
        batch: dict[str, Any],
        mmd_weight: float,
        want_aux: bool,
        weighted: bool = False,
    ) -> _LossOut:
        """:func:`_forward_loss` with this run's modalities, device, padding and AMP."""
        return _forward_loss(
            net,
            batch,
            self.modalities,
            self.device,
            self.cfg,
            mmd_weight,
            self.divisor,
            self.ignore_index,
            self.autocast,
            want_aux,
            self.class_weight if weighted else None,
        )

    def _train_step(self, batch: dict[str, Any], epoch: int, bar: Any) -> torch.Tensor:
        """Forward, backward, (clipped) optimiser and schedule step; the batch's sums row."""
        from mfaf_cli.models.losses import ramp_weight

        cfg = self.cfg
        w = 0.0
        if cfg.mmd != "none":
            w = ramp_weight(self.global_step, self.total_steps, cfg.mmd_lambda, cfg.mmd_warmup)
        if cfg.modality_dropout > 0:  # --modality-dropout: training/dropout.py
            from mfaf_cli.training.dropout import apply_to_batch

            seed = cfg.seed + 7919 * int(getattr(self.d, "rank", 0))
            batch = apply_to_batch(
                batch, self.modalities, cfg.modality_dropout, seed, self.global_step
            )
        loss, ce, mmd, _, _, monitors = self._forward(
            self.net, batch, w, want_aux=True, weighted=True
        )
        self.mmd_used = self.mmd_used or monitors is not None
        cos, head_free = monitors or (0.0, 0.0)
        bad = nonfinite_ranks(loss, self.d)  # agreed by every rank: all stop together
        if bad:
            ranks = f"non-finite on rank {', '.join(map(str, bad))} of {self.d.world}"
            raise DatasetError(
                f"training diverged at epoch {epoch + 1} step {self.global_step} "
                f"(loss {ranks if self.d.enabled else float(loss)}); "
                "lower --lr or enable --grad-clip"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.progress.global_step += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{float(loss.detach()):.4f}", lr=f"{self.sched.get_last_lr()[0]:.2e}"
            )
        values = [float(loss.detach()), float(ce.detach()), float(mmd.detach()), 1.0]
        values += [cos, head_free, float(monitors is not None)]
        return torch.tensor(values, dtype=torch.float64)

    def validate(self, loader: Any | None = None) -> tuple[np.ndarray, float]:
        """(confusion matrix, mean CE) over the validation split, summed over processes;
        ``loader`` is this process's share of it (built here if not given)."""
        cfg, d, k = self.cfg, self.d, self.k
        if loader is None:
            loader = _val_loader(self.val_ds, cfg, d)
        self.model.eval()
        cm = torch.zeros((k, k), dtype=torch.float64)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        n = len(loader) if cfg.max_val_batches is None else min(len(loader), cfg.max_val_batches)
        with torch.inference_mode():
            for batch in _progress(
                itertools.islice(loader, cfg.max_val_batches), n, "val", cfg.progress and d.main
            ):
                _, ce, _, logits, mask, _ = self._forward(self.model, batch, 0.0, want_aux=False)
                pred = logits.argmax(1).cpu().numpy()
                m = mask.cpu().numpy()
                cm_b = confusion_matrix(pred, m, k, self.ignore_index).astype(np.float64)
                cm += torch.from_numpy(cm_b)
                loss_sum += torch.tensor([float(ce), 1.0], dtype=torch.float64)
        cm = _all_reduce(cm.to(self.device), d).cpu()
        loss_sum = _all_reduce(loss_sum.to(self.device), d).cpu()
        val_loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else float("nan")
        return cm.numpy().astype(np.int64), val_loss
