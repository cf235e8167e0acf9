"""Shared fixtures: a tiny generator config and weights files made from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from derain.model import Generator, GeneratorConfig, init_for_training
from derain.weights import save_weights

TINY = GeneratorConfig(
    steps=2, rnn_width=4, rnn_blocks=1, widths=(4, 8, 8), dilations=(2,), head_width=4, residual=True
)


def tiny_model(seed: int = 0, config: GeneratorConfig = TINY) -> Generator:
    torch.manual_seed(seed)
    model = Generator(config)
    init_for_training(model)
    with torch.no_grad():  # non-zero heads so the output is not simply the input
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_weights(tiny_model(), path, {"trained_on": "nothing (test)"})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_image(rng: np.random.Generator, height: int, width: int, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (height, width, 3), dtype=np.int64).astype(dtype)
