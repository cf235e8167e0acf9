"""Training the generator: schedule, EMA, checkpoints, validation, export.

One process, no DataLoader workers (see :mod:`.data`). A checkpoint holds everything needed to
resume bit-for-bit on the same machine: model, EMA, optimiser, step and the random generators.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics
from ..allocator import keep_freed_memory
from ..engine import apply_gate, cpu_supports_bf16
from ..model import AttentiveDiscriminator, Generator, GeneratorConfig, init_for_training
from ..weights import load_weights, save_weights
from . import losses
from .data import PairedImages, UnpairedImages

UNPAIRED_GAN_WEIGHT = 0.01
"""The paper's adversarial weight, the default when unpaired photos join the training."""


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the recipe that converges on a 2-core CPU."""

    steps: int = 4000
    batch: int = 4
    patch: int = 128
    lr: float = 5e-4
    rnn_lr_scale: float = 2.0
    """The attentive-recurrent branch learns faster with a larger step (it starts slowest)."""
    warmup: int = 100
    min_lr_ratio: float = 0.05
    clip: float = 1.0
    ema_decay: float = 0.999
    rnn_only_fraction: float = 0.1
    """Train the attentive-recurrent network alone for this first part of the run, so a fresh one
    gets a head start; skipped when starting from ``init_weights``, which are already trained."""
    distance: str = "mse"
    """'mse' (the paper's) or 'l1'. With a residual output, L1's constant pull towards zero on the
    drop-free 90 % of pixels holds the correction at zero for a long time; MSE lets the large
    errors inside drops lead."""
    ssim_weight: float = 0.1
    gan_weight: float = 0.0
    """0 disables the discriminator; the paper uses 0.01 (best added late in a run)."""
    identity_fraction: float = 0.0
    """Share of the training crops that are drop-free pairs (a clean crop as input and target).
    Rendered pairs teach the model to remove a wet-glass veil, a habit that also darkens hazy,
    low-contrast parts of photos without drops; identity pairs pull it back to "no drops, no change"."""
    identity_map_weight: float = 1.0
    """Weight of the attention loss on the drop-free crops, relative to rendered ones. Above 1 the
    map is told harder to stay shut where there are no drops: on CPU fine-tunes of derain-v14 that
    let the map train (crops at 0.3), ×4 took drop-free photos' worst from 31.6 to 32.7 dB at the
    same real-pair gain: a help, not yet a cure (weights/README.md)."""
    freeze_attention: bool = False
    """Train the autoencoder alone and keep ``init_weights``' attentive-recurrent network, so the
    maps, and with them where the attention gate lets changes through, stay as they were. Measured
    on fine-tunes of derain-v13 on small dense drops: two seeds landed 0.01 dB apart on the real
    pairs where the full fine-tune spread 0.4 dB, and a CPU step took about half the time."""
    unpaired_dir: str | None = None
    """Real rainy photos without ground truth. The attentive discriminator also sees the
    generator's outputs on them as fakes (clean photos are its reals), so the generator learns to
    leave nothing on real photos that looks like rain; needs ``gan_weight`` > 0."""
    unpaired_batch: int = 2
    """Unpaired crops per step (each costs a generator pass like a paired crop)."""
    residual: bool = False
    """Predict a correction added to the input instead of the image. Measured here: with Adam,
    a zero-initialised head and 90 % drop-free pixels, the residual autoencoder's ReLUs died
    within ~200 steps and it froze at the identity; the paper's plain output cannot collapse
    that way, because it has to carry the image."""
    seed: int = 0
    val_every: int = 250
    val_images: int = 16
    val_crop: int = 256
    checkpoint_every: int = 100
    log_every: int = 10
    generator: dict = field(default_factory=dict)
    """Overrides of :class:`GeneratorConfig` (tiny models for tests)."""
    attention_steps: int | None = None
    """N for this run; None keeps the initial weights' (the paper's 4 for a fresh model). The
    ConvLSTM shares its weights across steps, so trained weights can be unrolled for more steps
    and fine-tuned: each step propagates the map ~13 px further, and the interiors of large drops
    are only reached after several."""
    init_weights: str | None = None
    """Start from these weights (a shipped name or a path) instead of a fresh initialisation. A
    run's ``checkpoint.pt`` also brings its raw weights and Adam moments: a warm restart of a
    finished run on a new schedule, without the loss spike of a fresh optimiser. The EMA warms
    up again with the new schedule, so it soon follows the raw weights."""
    device: str = "cpu"
    mixed_precision: bool = True
    """Run forward and backward under bf16 autocast (weights, optimiser and losses stay fp32)
    where the device computes bf16 natively; with channels_last this halves a CPU step here."""


@dataclass
class Log:
    step: int
    steps: int
    losses: dict[str, float]
    lr: float
    seconds_per_step: float
    validation: dict[str, float] | None = None

    @property
    def eta_seconds(self) -> float:
        return (self.steps - self.step) * self.seconds_per_step


class EMA:
    """Exponential moving average of the weights, warmed up so early steps are not frozen in."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on ``device`` rather than emulating bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _to_bgr8(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()[..., ::-1]).copy()


@torch.inference_mode()
def validate(model: Generator, data: PairedImages, count: int, crop: int, gate: bool = False) -> dict[str, float]:
    """Paper-protocol PSNR/SSIM (and the input's own) on centre crops, the worst crop's PSNR (on a
    drop-free set, such as the ship rule's, how far the most changed photo moved), attention IoU.
    ``gate``: score the outputs through the attention gate, as users of gated weights get them."""
    model.eval()
    scores = {"psnr": [], "ssim": [], "input_psnr": [], "input_ssim": []}
    overlaps = []
    for i in range(min(count, len(data))):
        h, w = data.masks[i].shape
        ch, cw = min(crop, h) // 4 * 4, min(crop, w) // 4 * 4
        y, x = (h - ch) // 2, (w - cw) // 2
        sl = (slice(y, y + ch), slice(x, x + cw))
        rainy = torch.from_numpy(data.rainy[i][sl].copy()).permute(2, 0, 1)[None].float() / 255
        rainy = rainy.to(next(model.parameters()).device)
        out = model(rainy, side_outputs=False)
        image = out.image.float()
        if gate:
            apply_gate(image, rainy, out.attention[-1][:, 0])
        clean = data.clean[i][sl][..., ::-1]
        for prefix, img in (("", _to_bgr8(image[0].cpu())), ("input_", data.rainy[i][sl][..., ::-1])):
            p, s = metrics.score(np.ascontiguousarray(img), np.ascontiguousarray(clean))
            scores[prefix + "psnr"].append(p)
            scores[prefix + "ssim"].append(s)
        overlaps.append(metrics.attention_overlap(out.attention[-1][0, 0].float().cpu().numpy(), data.masks[i][sl]))
    result = {k: float(np.mean([v for v in vals if math.isfinite(v)] or [float("inf")])) for k, vals in scores.items()}
    result["worst_psnr"] = float(min(scores["psnr"]))
    result["attention_iou"] = metrics.pooled_iou(overlaps)
    return result


class Trainer:
    def __init__(self, cfg: TrainConfig, train_dir: Path, out_dir: Path, val_dir: Path | None = None) -> None:
        torch.set_flush_denormal(True)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.train_data = PairedImages(train_dir)
        self.val_data = PairedImages(val_dir, limit=cfg.val_images) if val_dir else None
        if cfg.unpaired_dir and cfg.gan_weight <= 0:
            raise ValueError("unpaired photos only take part through the discriminator: set a gan weight > 0")
        if cfg.freeze_attention and not cfg.init_weights:
            raise ValueError("freezing the attention keeps trained maps: start from trained weights (--init)")
        self.unpaired = UnpairedImages(Path(cfg.unpaired_dir)) if cfg.unpaired_dir else None
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        steps = {"steps": cfg.attention_steps} if cfg.attention_steps else {}
        self.gate = False  # a fine-tune of weights validated with the attention gate keeps it on
        if cfg.init_weights:
            loaded, info = load_weights(cfg.init_weights)
            self.gate = info.gate
            self.model = Generator(replace(loaded.config, **steps))
            self.model.load_state_dict(loaded.state_dict())
            self.model.train()
        else:
            self.model = Generator(GeneratorConfig.from_dict({"residual": cfg.residual, **cfg.generator, **steps}))
            init_for_training(self.model)
        self.model.attentive_rnn.requires_grad_(not cfg.freeze_attention)
        rnn_params = list(self.model.attentive_rnn.parameters())
        self.optimizer = torch.optim.Adam(
            [
                {"params": rnn_params, "lr_scale": cfg.rnn_lr_scale},
                {"params": list(self.model.autoencoder.parameters()), "lr_scale": 1.0},
            ],
            lr=cfg.lr,
        )
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every step has the same crop size: tune convolutions once
        elif self.device.type == "cpu":
            keep_freed_memory()  # each step would free and refault its activations: 3 % of a step here
        self.bf16 = cfg.mixed_precision and bf16_native(self.device)
        self.model.to(self.device, memory_format=torch.channels_last if self.bf16 else torch.preserve_format)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.discriminator = self.d_optimizer = None
        if cfg.gan_weight > 0:
            self.discriminator = AttentiveDiscriminator().to(self.device)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.step = 0
        self.best_psnr = -math.inf
        if (checkpoint := _training_checkpoint(cfg.init_weights)) is not None:
            self._carry_over(checkpoint)
        self.out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs have loaded

    def _carry_over(self, state: dict) -> None:
        """Take a checkpoint's raw and EMA weights and optimiser moments, keeping this run's schedule."""
        self.model.load_state_dict(state["generator"])
        self.ema.model.load_state_dict(state["ema"])
        scales = [group["lr_scale"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, scale in zip(self.optimizer.param_groups, scales):
            group["lr_scale"] = scale
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "generator": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "train_config": asdict(self.cfg),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "gate": self.gate,
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def resume(self, path: Path) -> None:
        """Continue this run exactly where its checkpoint stopped."""
        state = _read_checkpoint(path)
        saved, current = GeneratorConfig.from_dict(state["config"]).to_dict(), self.model.config.to_dict()
        if saved != current:
            names = {"steps": "attention steps"}  # not the training steps of --steps
            changed = "; ".join(
                f"{names.get(k, k)} {saved[k]}, now {current[k]}" for k in saved if saved[k] != current[k]
            )
            raise ValueError(
                f"{path} holds a different generator ({changed}): rerun with the options the run "
                "started with (such as --attention-steps), or with --restart"
            )
        self._carry_over(state)
        self.step = state["step"]
        self.best_psnr = state.get("best_psnr", -math.inf)
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"].cpu())

    def _set_lr(self) -> float:
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if self.d_optimizer is not None:
            for group in self.d_optimizer.param_groups:
                group["lr"] = lr
        return lr

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        batch = self.train_data.batch(self.rng, cfg.batch, cfg.patch, cfg.identity_fraction)
        rainy, clean, mask = (batch[k].to(self.device, non_blocking=True) for k in ("rainy", "clean", "mask"))
        if self.bf16:
            rainy = rainy.contiguous(memory_format=torch.channels_last)
        rnn_only = not cfg.init_weights and self.step < cfg.rnn_only_fraction * cfg.steps
        with self._autocast():
            out = None if rnn_only else self.model(rainy)
            maps = self.model.attentive_rnn(rainy) if rnn_only else out.attention
        parts = {} if cfg.freeze_attention else {"att": self._attention_loss(maps, mask, batch["drop_free"])}
        if out is not None:
            parts["ms"] = losses.multiscale_loss(
                (out.side_quarter, out.side_half, out.image), clean, distance=cfg.distance
            )
            if cfg.ssim_weight:
                parts["ssim"] = cfg.ssim_weight * losses.ssim_loss(out.image, clean)
            if self.discriminator is not None:
                parts.update(self._adversarial(out, clean, self._unpaired_outputs()))
        total = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        return {k: v.item() for k, v in parts.items()} | {"total": total.item()}

    def _attention_loss(self, maps: list[torch.Tensor], mask: torch.Tensor, drop_free: torch.Tensor) -> torch.Tensor:
        weights = None
        if self.cfg.identity_map_weight != 1.0:
            weights = torch.where(drop_free, self.cfg.identity_map_weight, 1.0)
        return losses.attention_loss(maps, mask, crop_weights=weights)

    def _unpaired_outputs(self) -> torch.Tensor | None:
        """The generator's outputs on a batch of real rainy crops, or None without unpaired photos."""
        if self.unpaired is None:
            return None
        real_rainy = self.unpaired.batch(self.rng, self.cfg.unpaired_batch, self.cfg.patch).to(self.device)
        if self.bf16:
            real_rainy = real_rainy.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(real_rainy, side_outputs=False).image.clamp(0, 1)

    def _adversarial(self, out, clean: torch.Tensor, unpaired: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One discriminator update, then the generator's adversarial terms.

        The paper's map loss needs the generator's attention on a rendered pair; outputs on
        unpaired real photos take part only as fakes (their drops have no mask to check against).
        """
        fake = out.image.clamp(0, 1)
        with self._autocast():
            real_logit, real_map = self.discriminator(clean)
            fake_logit, fake_map = self.discriminator(fake.detach())
            unpaired_logit = None if unpaired is None else self.discriminator(unpaired.detach())[0]
        d_loss = losses.discriminator_loss(
            real_logit, fake_logit, real_map, fake_map, out.attention[-1].detach().clamp(0, 1)
        )
        if unpaired_logit is not None:
            d_loss = d_loss + losses.fake_loss(unpaired_logit)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        with self._autocast():
            parts = {"gan": self.cfg.gan_weight * losses.generator_adversarial_loss(self.discriminator(fake)[0])}
            if unpaired is not None:
                g_logit = self.discriminator(unpaired)[0]
                parts["gan_real"] = self.cfg.gan_weight * losses.generator_adversarial_loss(g_logit)
        return parts

    def run(self) -> Iterator[Log]:
        """Train to ``cfg.steps``, yielding a :class:`Log` every ``log_every`` steps."""
        cfg = self.cfg
        window: dict[str, list[float]] = {}
        tick = time.perf_counter()
        since = 0
        while self.step < cfg.steps:
            lr = self._set_lr()
            for k, v in self.train_step().items():
                window.setdefault(k, []).append(v)
            self.step += 1
            since += 1
            validation = None
            if self.val_data is not None and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                validation = validate(self.ema.model, self.val_data, cfg.val_images, cfg.val_crop, self.gate)
                if validation["psnr"] > self.best_psnr:
                    self.best_psnr = validation["psnr"]
                    self.export(self.out_dir / "best.safetensors", {"validation_crops": validation})
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.step % cfg.log_every == 0 or validation or self.step == cfg.steps:
                elapsed = time.perf_counter() - tick
                yield Log(
                    self.step,
                    cfg.steps,
                    {k: float(np.mean(v)) for k, v in window.items()},
                    lr,
                    elapsed / since,
                    validation,
                )
                window, tick, since = {}, time.perf_counter(), 0

    def export(self, path: Path, extra: dict | None = None) -> Path:
        """Write the EMA weights in the shipped format with their training provenance."""
        meta = {
            "trained_steps": self.step,
            "train_config": {k: v for k, v in asdict(self.cfg).items() if k != "generator"},
            **({"gate": True} if self.gate else {}),
            **(extra or {}),
        }
        return save_weights(self.ema.model, path, meta)


def _read_checkpoint(path: Path) -> dict:
    # tensors and plain Python values only, so the safe loader reads it
    return torch.load(path, map_location="cpu", weights_only=True)


def _training_checkpoint(weights: str | None) -> dict | None:
    """The run checkpoint that ``init_weights`` names, or None when it names plain weights."""
    if not weights or Path(weights).suffix != ".pt":
        return None
    state = _read_checkpoint(Path(weights))
    return state if "optimizer" in state else None


def train(
    cfg: TrainConfig,
    train_dir: Path,
    out_dir: Path,
    val_dir: Path | None = None,
    resume: bool = True,
    on_log: Callable[[Log], None] | None = None,
) -> Trainer:
    """Train (resuming from ``out_dir/checkpoint.pt`` when present) and export ``final.safetensors``."""
    trainer = Trainer(cfg, train_dir, out_dir, val_dir)
    if resume and trainer.checkpoint_path.exists():
        trainer.resume(trainer.checkpoint_path)
    for log in trainer.run():
        if on_log:
            on_log(log)
    trainer.export(Path(out_dir) / "final.safetensors")
    return trainer
