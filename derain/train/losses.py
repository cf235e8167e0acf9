"""The paper's losses, plus the substitutes we use where the paper's cannot run here.

Every loss is computed in fp32, whatever precision the forward pass ran in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: θ: later attention steps weigh more, θ^(N−t).
ATTENTION_THETA = 0.8
#: λ for the 1/4-scale, 1/2-scale and full-scale outputs.
SCALE_WEIGHTS = (0.6, 0.8, 1.0)
#: Weight of the adversarial term in the generator loss, and γ of the discriminator's map loss.
GAN_WEIGHT = 0.01
MAP_WEIGHT = 0.05

_DISTANCES = {"l1": F.l1_loss, "mse": F.mse_loss}


def attention_loss(
    maps: Sequence[torch.Tensor],
    mask: torch.Tensor,
    theta: float = ATTENTION_THETA,
    crop_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_ATT = Σ_t θ^(N−t) · MSE(A_t, M), each crop's squared errors scaled by ``crop_weights`` (N,)
    when given (1 everywhere is the paper's loss)."""
    n = len(maps)
    scale = 1.0 if crop_weights is None else crop_weights.to(mask).view(-1, 1, 1, 1)
    return sum(
        theta ** (n - 1 - t) * (scale * F.mse_loss(a.float(), mask, reduction="none")).mean()
        for t, a in enumerate(maps)
    )


def multiscale_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    weights: Sequence[float] = SCALE_WEIGHTS,
    distance: str = "mse",
) -> torch.Tensor:
    """L_M = Σ_i λ_i · d(S_i, T_i), T_i the target area-downscaled to each output's size."""
    dist = _DISTANCES[distance]
    total = target.new_zeros(())
    for weight, out in zip(weights, outputs):
        factor = target.shape[-1] // out.shape[-1]
        scaled = F.avg_pool2d(target, factor) if factor > 1 else target
        total = total + weight * dist(out.float(), scaled)
    return total


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """1 − SSIM with a uniform window, our stand-in for the VGG perceptual term.

    No ImageNet network can be downloaded here; SSIM rewards the same local structure and
    contrast a feature loss does, at a fraction of the cost.
    """
    x, y = x.float(), y.float()
    c1, c2 = 0.01**2, 0.03**2
    pad = window // 2

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, (pad,) * 4, mode="reflect"), window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1.0 - s.mean()


def generator_adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The non-saturating form of log(1 − D(O)): same optimum, useful gradients early on."""
    fake_logit = fake_logit.float()
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def fake_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The discriminator's −log(1 − D(O)) for a batch of generated images."""
    fake_logit = fake_logit.float()
    return F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))


def discriminator_loss(
    real_logit: torch.Tensor,
    fake_logit: torch.Tensor,
    real_map: torch.Tensor,
    fake_map: torch.Tensor,
    attention: torch.Tensor,
    gamma: float = MAP_WEIGHT,
) -> torch.Tensor:
    """L_D = −log D(R) − log(1 − D(O)) + γ·[MSE(D_map(O), A_N) + MSE(D_map(R), 0)]."""
    # fp32 throughout: CUDA's MSE backward refuses a bf16 target (the attention map under autocast)
    real_logit, fake_logit, real_map, fake_map, attention = (
        t.float() for t in (real_logit, fake_logit, real_map, fake_map, attention)
    )
    adversarial = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + fake_loss(fake_logit)
    map_loss = F.mse_loss(fake_map, attention) + F.mse_loss(real_map, torch.zeros_like(real_map))
    return adversarial + gamma * map_loss
