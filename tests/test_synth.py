import hashlib

import cv2
import numpy as np

from derain.synth import RenderConfig, list_photos, make_triple, render_raindrops, split_of, synthesize_dataset


def _photo(height: int = 120, width: int = 160) -> np.ndarray:
    """Bright at the top, dark at the bottom, textured: orientation is easy to check."""
    rng = np.random.default_rng(3)
    ramp = np.linspace(230, 30, height)[:, None, None]
    return np.clip(ramp + rng.integers(-10, 10, (height, width, 3)), 0, 255).astype(np.uint8)


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _photo())
    photos = list_photos(tmp_path)
    synthesize_dataset(photos, tmp_path / "one", 4, (64, 48), seed=5)
    synthesize_dataset(photos, tmp_path / "two", 4, (64, 48), seed=5)
    synthesize_dataset(photos, tmp_path / "three", 4, (64, 48), seed=6)
    one = _digest(tmp_path / "one")
    assert len(one) == 12 and {"data/0_rain.png", "gt/0_clean.png", "mask/0_mask.png"} <= set(one)
    assert one == _digest(tmp_path / "two")
    assert one != _digest(tmp_path / "three")


def test_mask_marks_exactly_where_the_drops_changed_the_image():
    clean = _photo().astype(np.float32) / 255
    cfg = RenderConfig(empty_prob=0.0, coverage=(0.3, 0.3))
    for seed in range(4):
        rainy, mask = render_raindrops(clean, np.random.default_rng(seed), cfg)
        assert rainy.dtype == np.float32 and rainy.min() >= 0 and rainy.max() <= 1
        assert set(np.unique(mask)) <= {0, 255}
        diff = np.abs(rainy - clean).max(axis=2)
        assert np.all(diff[mask == 0] < cfg.mask_threshold), "every visible change is in the mask"
        assert np.mean(diff[mask == 255] >= cfg.mask_threshold) > 0.8, "the mask is mostly visible change"
        assert mask.mean() > 0


def test_empty_samples_leave_the_photo_untouched():
    clean = _photo().astype(np.float32) / 255
    rainy, mask = render_raindrops(clean, np.random.default_rng(0), RenderConfig(empty_prob=1.0))
    assert np.array_equal(rainy, clean) and not mask.any()


def test_triples_are_uint8_and_never_flipped_vertically():
    photo = _photo()
    for seed in range(6):
        rainy, clean, mask = make_triple(photo, (96, 64), np.random.default_rng(seed))
        assert rainy.shape == clean.shape == (64, 96, 3) and mask.shape == (64, 96)
        assert rainy.dtype == clean.dtype == mask.dtype == np.uint8
        assert clean[:8].mean() > clean[-8:].mean() + 40, "the sky stays on top"


def test_split_is_stable_and_roughly_ten_percent():
    names = [f"photo_{i}.jpg" for i in range(2000)]
    val = [n for n in names if split_of(n) == "val"]
    assert 120 < len(val) < 280
    assert val == [n for n in names if split_of(n) == "val"]
