"""derain train: fit the generator to paired data."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..engine import pick_device
from ..train.loop import UNPAIRED_GAN_WEIGHT, Log, TrainConfig, train
from ..weights import WeightsError
from .common import BadSetup, InputFailed, console, friendly


def _print_log(log: Log) -> None:
    losses = "  ".join(f"{k} {v:.4f}" for k, v in log.losses.items())
    eta = f"{log.eta_seconds / 60:.0f} min"
    console.print(
        f"step {log.step}/{log.steps}  lr {log.lr:.2e}  {log.seconds_per_step:.2f} s/step  eta {eta}  {losses}"
    )
    if log.validation:
        v = log.validation
        console.print(
            f"  [bold]val[/] PSNR {v['psnr']:.2f} dB (input {v['input_psnr']:.2f}, worst {v['worst_psnr']:.2f})  "
            f"SSIM {v['ssim']:.4f} (input {v['input_ssim']:.4f})  attention IoU {v['attention_iou']:.3f}"
        )


@click.command("train")
@click.argument("data_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Run folder: checkpoint.pt (resumable), best.safetensors, final.safetensors.",
)
@click.option(
    "--val",
    "val_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Held-out pairs for periodic validation: PSNR/SSIM (the mean and the worst image) and attention "
    "IoU, through the attention gate for weights that use it. A folder of drop-free pairs here shows "
    "how far training moves photos without drops.",
)
@click.option(
    "--steps",
    default=TrainConfig.steps,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training steps (optimiser updates) in all, counting those of the run being resumed.",
)
@click.option(
    "--batch", default=TrainConfig.batch, show_default=True, type=click.IntRange(min=1), help="Crops per step."
)
@click.option(
    "--patch",
    default=TrainConfig.patch,
    show_default=True,
    type=click.IntRange(min=16),
    help="Side of the square crops cut from the pairs (px; at most the smallest pair's short side).",
)
@click.option(
    "--lr",
    default=TrainConfig.lr,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate.",
)
@click.option(
    "--warmup",
    default=TrainConfig.warmup,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps of linear warm-up to --lr; a cosine decay follows.",
)
@click.option(
    "--min-lr-ratio",
    default=TrainConfig.min_lr_ratio,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Where the cosine decay ends, as a fraction of --lr.",
)
@click.option(
    "--seed",
    default=TrainConfig.seed,
    show_default=True,
    help="Seeds the crops, their order and fresh weights.",
)
@click.option(
    "--gan-weight",
    default=None,
    type=click.FloatRange(min=0),
    help="Adversarial term with the attentive discriminator (paper: 0.01); 0 disables it. "
    f"Default: {TrainConfig.gan_weight:g}, or {UNPAIRED_GAN_WEIGHT:g} with --unpaired.",
)
@click.option(
    "--identity",
    "identity_fraction",
    default=TrainConfig.identity_fraction,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of training crops that are drop-free (the clean crop as input and target), so the "
    "model learns to leave photos without drops untouched. Raise it (say 0.25) if outputs darken "
    "hazy or low-contrast areas of drop-free photos.",
)
@click.option(
    "--identity-map-weight",
    default=TrainConfig.identity_map_weight,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Weight of the attention-map loss on the drop-free crops (--identity), relative to rendered "
    "crops. Raise it (say 4) if a fine-tune whose maps train opens them on drop-free photos.",
)
@click.option(
    "--freeze-attention",
    is_flag=True,
    help="With --init: train the autoencoder alone and keep the initial weights' attention maps, "
    "so where the model changes a photo stays as it was (steadier from seed to seed, and about half "
    "the time per step on a CPU).",
)
@click.option(
    "--unpaired",
    "unpaired_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="A folder of real rainy photos without ground truth (say, your own camera's): the "
    "discriminator learns to tell the outputs on them from clean photos, so the generator learns "
    "to leave no rain on real photos. Adapt a model to your camera with --init and --unpaired.",
)
@click.option(
    "--residual/--paper-output",
    default=False,
    show_default=True,
    help="Predict a correction added to the input instead of the image itself as the paper does "
    "(ignored with --init, whose weights fix the architecture).",
)
@click.option(
    "--attention-steps",
    default=None,
    metavar="N",
    type=click.IntRange(min=1),
    help="N, the attentive-recurrent steps (paper and default: 4, or what --init's weights use). "
    "With --init, the trained ConvLSTM is unrolled for N steps; more let the map fill large drops.",
)
@click.option(
    "--init",
    "init_weights",
    default=None,
    metavar="NAME|PATH",
    help="Start from these weights: a shipped name, a weights file, or a run's checkpoint.pt, which also "
    "brings its raw weights and optimiser moments (a warm restart of a finished run on a new schedule).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="auto|cpu|cuda[:N]|mps",
    help="Where to train; a CUDA GPU is worth days of a CPU (auto takes one where there is one).",
)
@click.option(
    "--mixed-precision/--fp32",
    default=TrainConfig.mixed_precision,
    show_default=True,
    help="bf16 autocast where the device computes bf16 natively (about 2x faster on a recent CPU); "
    "weights, optimiser and losses stay fp32.",
)
@click.option("--resume/--restart", default=True, show_default=True, help="Continue from the run folder's checkpoint.")
@click.option(
    "--val-every",
    default=TrainConfig.val_every,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between validations on --val (each may update best.safetensors).",
)
@click.option(
    "--val-images",
    default=TrainConfig.val_images,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many of --val's pairs (the first, by number) each validation scores.",
)
@click.option(
    "--val-crop",
    default=TrainConfig.val_crop,
    show_default=True,
    type=click.IntRange(min=16),
    help="Side of the centre crop scored; one larger than the images scores them whole.",
)
@friendly
def train_cmd(data_dir: Path, run_dir: Path, val_dir: Path | None, residual: bool, resume: bool, **options) -> None:
    """Train the generator on pairs in the Raindrop layout (data/<i>_rain.*, gt/<i>_clean.*).

    Masks come from mask/<i>_mask.png when present, else from the paper's |rainy − clean| > 30
    rule. The EMA weights of the best validation step and of the last step are exported in
    the shipped format; Ctrl-C and rerun resumes from the last checkpoint.

    \b
    Example:
      derain synth photos/ -o data/train --count 1400 --split train
      derain train data/train --val data/val -o runs/v1 --steps 3000
      derain train data/more --val data/val -o runs/v2 --init runs/v1/checkpoint.pt --lr 1e-4
      derain train data/train -o runs/mycam --init derain-v14 --unpaired my_dashcam_frames/ --lr 5e-5
    """
    if options["freeze_attention"] and not options["init_weights"]:
        raise BadSetup("--freeze-attention keeps trained attention maps: add --init NAME|PATH")
    if not data_dir.is_dir():
        raise InputFailed(f"{data_dir}: no such folder")
    try:  # a device that is not there is a bad command line (exit 2), found before the data loads
        options["device"] = str(pick_device(options["device"]))
    except ValueError as exc:
        raise BadSetup(str(exc)) from None
    if options["gan_weight"] is None:
        options["gan_weight"] = UNPAIRED_GAN_WEIGHT if options["unpaired_dir"] else TrainConfig.gan_weight
    cfg = TrainConfig(residual=residual, **options)
    try:
        trainer = train(cfg, data_dir, run_dir, val_dir, resume=resume, on_log=_print_log)
    except WeightsError as exc:  # unusable --init weights: exit 2, as for every command's --weights
        raise BadSetup(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"the same command resumes from the last checkpoint (saved every {cfg.checkpoint_every} steps)")
        raise
    console.print(f"[green]✓[/] trained to step {trainer.step}; weights in {escape(str(run_dir))}/final.safetensors")
