import dataclasses
import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import Result

from derain import optics
from derain.synth import (
    PHONE,
    RenderConfig,
    check_size,
    contact_sheet,
    draw_footprints,
    draw_shot,
    lamp_images,
    list_photos,
    make_triple,
    render_raindrops,
    render_samples,
    split_of,
    synthesize_dataset,
)

from .test_cli import assert_fails, run

#: Daylight, no haze, noise or JPEG: what is left is the drops themselves.
PLAIN = RenderConfig(night_prob=0.0, haze_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, empty_prob=0.0)


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


def test_the_same_draw_puts_the_same_drops_on_any_photo():
    a = _photo().astype(np.float32) / 255
    b = np.ascontiguousarray(a[::-1])
    one = render_raindrops(a, np.random.default_rng(1), PLAIN)
    two = render_raindrops(b, np.random.default_rng(1), PLAIN)
    assert one.mask.any() and np.mean(one.mask == two.mask) > 0.9


def test_mask_marks_exactly_where_the_drops_changed_the_image():
    clean = _photo().astype(np.float32) / 255
    cfg = RenderConfig(
        empty_prob=0.0, coverage=(0.3, 0.3), haze_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, night_prob=0.0
    )
    for seed in range(4):
        rainy, target, mask = render_raindrops(clean, np.random.default_rng(seed), cfg)
        assert rainy.dtype == np.float32 and rainy.min() >= 0 and rainy.max() <= 1
        assert set(np.unique(mask)) <= {0, 255}
        diff = np.abs(rainy - target).max(axis=2)
        assert np.all(diff[mask == 0] < cfg.mask_threshold + 1.5 / 255), "every visible change is in the mask"
        visible = (diff >= cfg.mask_threshold - 1.5 / 255).astype(np.uint8)  # the mask is drawn before 8-bit rounding
        reach = cv2.dilate(visible, np.ones((cfg.mask_close, cfg.mask_close), np.uint8))
        assert np.all(reach[mask == 255]), "the mask only closes small gaps between visible changes"
        assert mask.mean() > 0


def test_the_wet_glass_veil_lies_where_the_water_is():
    """Dry glass between sparse drops shows the scene untouched, or a model learns to dim every photo."""
    clean = _photo(240, 320).astype(np.float32) / 255
    sparse = dict(
        empty_prob=0.0, coverage=(0.03, 0.03), drizzle_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, night_prob=0.0
    )
    for floor, untouched in ((0.0, lambda share: share > 0.3), (0.3, lambda share: share < 0.05)):
        cfg = RenderConfig(haze_prob=1.0, haze=(0.3, 0.3), haze_floor=floor, **sparse)
        rainy, target, mask = render_raindrops(clean, np.random.default_rng(1), cfg)
        assert mask.any()
        assert untouched(np.mean(np.all(rainy == target, axis=2))), f"haze_floor={floor}"


def test_night_glare_lies_where_the_water_is_and_is_marked_as_rain():
    """Glare is lamp light scattered by water: dry glass adds none, and what it adds is in the mask
    (unmasked halos taught a model to dim every dark photo)."""
    night = _photo(240, 320).astype(np.float32) / 255
    cfg = dataclasses.replace(
        PLAIN, night_prob=1.0, lamps=(15, 15), glare=(0.12, 0.12), glare_sigma=(40.0, 40.0), coverage=(0.03, 0.03)
    )
    rainy, target, mask = render_raindrops(night, np.random.default_rng(4), cfg)
    dark = dataclasses.replace(cfg, glare=(0.0, 0.0))
    unlit, _, unlit_mask = render_raindrops(night, np.random.default_rng(4), dark)
    assert (mask > 0).sum() > (unlit_mask > 0).sum(), "the halos are visible and marked"
    halo = np.abs(rainy - unlit).max(axis=2)[mask == 0]
    assert halo.mean() < 1.0 / 255 and np.mean(halo > 8 / 255) < 0.05, "dry glass shows (almost) no halo"


def test_empty_samples_are_identical_pairs_even_with_noise_and_jpeg():
    clean = _photo().astype(np.float32) / 255
    cfg = RenderConfig(empty_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    rainy, target, mask = render_raindrops(clean, np.random.default_rng(0), cfg)
    assert np.array_equal(rainy, target) and not mask.any()
    assert not np.array_equal(target, np.round(clean * 255) / 255), "noise and JPEG reach the clean side too"


def _cap(size: int, radius: float, angle_deg: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    distance_from_edge = radius - np.hypot(yy, xx)
    inside = distance_from_edge > 0
    return optics.cap_height(np.clip(distance_from_edge, 0, None), radius, math.radians(angle_deg)) * inside


def test_a_traced_drop_shows_the_scene_inverted_and_minified():
    size, radius = 201, 20.0
    map_x, map_y, transmittance, _ = optics.trace_drops(_cap(size, radius, 60).astype(np.float32), focal=400.0)
    centre = size // 2
    column = map_y[centre - 15 : centre + 16, centre]  # straight down through the drop
    assert np.all(np.diff(column) < 0), "lower drop pixels see higher parts of the scene"
    assert column[0] - column[-1] > 3 * 30, "30 px of drop span far more than 30 px of scene"
    assert map_y[5, 5] == np.float32(5.0) or abs(map_y[5, 5] - 5.0) < 1e-3, "outside the drop rays pass straight"
    # A vertical gradient seen through the drop comes out reversed.
    scene = np.repeat(np.linspace(0, 1, size, dtype=np.float32)[:, None], size, axis=1)
    seen = cv2.remap(scene, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    assert seen[centre - 10, centre] > seen[centre + 10, centre] and scene[centre - 10, 0] < scene[centre + 10, 0]
    # Beyond the critical angle (48.6° for water) no light gets out near the contact line: a dark rim.
    assert transmittance[centre, centre] > 0.95
    assert transmittance[centre, centre + int(radius) - 1] < 0.2


def test_steep_drops_see_beyond_the_frame_and_show_its_light_there():
    grey = np.full((120, 160, 3), 0.5, np.float32)  # the mirrored frame is as bright everywhere
    steep = dataclasses.replace(
        PLAIN, drop_focus_prob=1.0, contact_angle=(80.0, 90.0), coverage=(0.2, 0.2), specular_prob=0.0
    )

    def render(light: float):
        cfg = dataclasses.replace(steep, outside_light=(light, light))
        return render_raindrops(grey, np.random.default_rng(5), cfg)

    bright, dim = render(1.0), render(0.1)
    darker = bright.rainy.max(axis=2) - dim.rainy.max(axis=2)
    assert darker.min() >= -1 / 255, "a darker world beyond the frame never brightens a pixel"
    assert darker.max() > 0.1 and dim.mask.sum() > 1.2 * bright.mask.sum(), "steep edges turn dark"
    # Through dry glass each ray sees its own pixel: the frame itself, at full brightness.
    map_x, map_y, _, _ = optics.trace_drops(np.zeros((120, 160), np.float32), focal=200.0)
    assert np.allclose(optics.light_beyond_frame(map_x, map_y, 0.1, fade=24.0), 1.0)
    far_left = optics.light_beyond_frame(map_x - 160.0, map_y, 0.1, fade=24.0)
    assert np.allclose(far_left[:, :136], 0.1) and np.all(np.diff(far_left[0, 136:]) > 0)


def test_defocus_follows_the_focus():
    def blur(cfg: RenderConfig) -> tuple[float, float]:
        shot = draw_shot(np.random.default_rng(1), 720, cfg)
        return shot.glass_blur, shot.scene_blur

    far = RenderConfig(cameras=(PHONE,), drop_focus_prob=0.0)
    near, near_scene = blur(RenderConfig(cameras=(PHONE,), drop_focus_prob=0.0, glass_mm=(20, 20)))
    distant, _ = blur(RenderConfig(cameras=(PHONE,), drop_focus_prob=0.0, glass_mm=(100, 100)))
    assert near_scene == 0.0 and near > 2 * distant > 0, "glass nearer the lens is blurred more"
    assert 10 < blur(far)[0] <= far.max_defocus, "a phone blurs glass a few cm away by tens of pixels"
    sharp, scene = blur(RenderConfig(cameras=(PHONE,), drop_focus_prob=1.0, glass_mm=(20, 20)))
    assert sharp <= RenderConfig().drop_focus_residual[1] and scene > 5, "focused on the glass: sharp drops, soft scene"
    # The point-spread function is a disc of that diameter.
    point = np.zeros((81, 81), np.float32)
    point[40, 40] = 1
    disc = optics.defocus(point, 30.0) > 1e-5  # (large kernels go through the DFT: round-off elsewhere)
    assert abs(disc.sum() - math.pi * 15**2) < 0.1 * math.pi * 15**2


def test_night_lamps_seen_through_drops_become_bokeh_discs_of_the_glass_blur():
    black = np.zeros((240, 360, 3), np.float32)
    cfg = RenderConfig(
        cameras=(PHONE,),
        glass_mm=(60, 60),
        drop_focus_prob=0.0,
        night_prob=1.0,
        lamps=(12, 12),
        empty_prob=0.0,
        haze_prob=0.0,
        noise_prob=0.0,
        jpeg_prob=0.0,
        glare=(0.0, 0.0),
        coverage=(0.3, 0.3),
    )
    glass_blur = draw_shot(np.random.default_rng(2), 360, cfg).glass_blur
    rainy, clean, _ = render_raindrops(black, np.random.default_rng(2), cfg)
    lit = ((rainy - clean).max(axis=2) > 0.2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(lit)
    widths = stats[1:, cv2.CC_STAT_WIDTH]
    assert count > 1 and glass_blur > 5
    assert np.median(widths) >= 0.7 * glass_blur, "each lit drop spreads over the circle of confusion"


def test_at_night_defocused_drops_glow_without_a_lamp_in_the_frame():
    black = np.zeros((120, 160, 3), np.float32)
    night = dataclasses.replace(
        PLAIN, night_prob=1.0, lamps=(0, 0), glare=(0.0, 0.0), specular_prob=0.0, coverage=(0.2, 0.2)
    )

    def render(**changes):
        return render_raindrops(black, np.random.default_rng(3), dataclasses.replace(night, **changes))

    rainy, clean, mask = render(drop_focus_prob=0.0, night_glow=(1.0, 1.0))
    assert clean.max() == 0 and mask.any()
    assert np.median(rainy[mask > 0].max(axis=1)) > 0.3, "the drops show the lamps around the camera"
    assert render(drop_focus_prob=0.0, night_glow=(1e-4, 1e-4)).rainy.max() < 0.1
    in_focus = render(drop_focus_prob=1.0, night_glow=(1.0, 1.0))
    lit = in_focus.rainy.max(axis=2) > 0.3
    assert lit.any() and lit.mean() < 0.1 * night.coverage[0], "in focus, the lamps are points in the water"


def test_each_drop_focuses_its_lamp_light_into_a_few_points():
    region = np.zeros((60, 90), np.uint8)
    cv2.circle(region, (20, 30), 3, 1, -1)
    cv2.circle(region, (60, 30), 12, 1, -1)
    cfg = RenderConfig(lamp_images=(1, 3), lamp_image_spread=0.0)
    images = lamp_images(region, 0.5, np.random.default_rng(0), cfg)
    _, labels = cv2.connectedComponents(region)
    lit = images.max(axis=2) > 0
    assert not (lit & (region == 0)).any(), "the lamp images lie inside the drops"
    for drop in (1, 2):
        inside = labels == drop
        assert 1 <= (lit & inside).sum() <= 3
        # every lamp's red is full: the red light of a drop is all it gathers, glow × its area
        assert images[..., 0][inside].sum() == pytest.approx(0.5 * inside.sum(), rel=1e-5)


def test_a_bokeh_rim_puts_light_at_the_discs_edge_and_keeps_its_total():
    plain, rimmed = optics.disc_kernel(21.0), optics.disc_kernel(21.0, rim=0.5)
    assert rimmed.shape == plain.shape and math.isclose(rimmed.sum(), 1.0, rel_tol=1e-5)
    centre, edge = rimmed.shape[0] // 2, rimmed.shape[0] // 2 + 9  # the radius is 10.5 px
    assert rimmed[centre, edge] > 3 * rimmed[centre, centre]
    assert math.isclose(plain[centre, edge], plain[centre, centre], rel_tol=1e-6)


@pytest.mark.parametrize("focused", [False, True])
def test_a_drizzle_is_many_small_drops_that_stand_apart(focused):
    # a drizzle by chance, or because the camera focused on the glass; never a large drop in it
    cfg = RenderConfig(
        drizzle_prob=0.0 if focused else 1.0,
        drop_focus_drizzle_prob=1.0 if focused else 0.0,
        large_drop_prob=1.0,
        trail_prob=0.0,
        coverage=(0.2, 0.2),
    )
    region = draw_footprints(np.random.default_rng(0), 240, 720, cfg, drop_focus=focused)
    count, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=4)
    assert region.mean() == pytest.approx(0.2, abs=0.01)
    assert count - 1 > 1000
    # no drop joins another: at most two beads just touching, never a merged cluster
    assert stats[1:, cv2.CC_STAT_AREA].max() < 2 * math.pi * cfg.drizzle_radius[1] ** 2


def _patches_of_water(region: np.ndarray) -> np.ndarray:
    """Pixel areas of the connected patches of water."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    return stats[1:, cv2.CC_STAT_AREA]


def test_dense_water_stays_separate_drops_unless_they_merge():
    dense = RenderConfig(coverage=(0.6, 0.6), drizzle_prob=0.0, large_drop_prob=0.0, trail_prob=0.0)
    apart, merging = (
        _patches_of_water(draw_footprints(np.random.default_rng(1), 240, 360, dataclasses.replace(dense, merge_prob=p)))
        for p in (0.0, 1.0)
    )
    # a drop landing on water is skipped: hundreds of separate drops, none holding much of the
    # water, where merging grows a few networks that hold most of it
    assert len(apart) > 200 and apart.max() < 0.1 * apart.sum()
    assert len(merging) < 100 and merging.max() > 0.2 * merging.sum()


def test_settings_from_a_command_line_keep_each_fields_type():
    cfg = RenderConfig().with_settings(["night_prob=0.5", "coverage=0.3,0.7", "lamps=3,4", " mask_close=7"])
    assert cfg.night_prob == 0.5 and cfg.coverage == (0.3, 0.7) and cfg.lamps == (3, 4) and cfg.mask_close == 7
    assert RenderConfig().with_settings([]) == RenderConfig()
    for bad in ("night_prob", "lamps=3", "lamps=3.5,4", "nope=1", "to_dict=1", "cameras=1"):
        with pytest.raises(ValueError, match="'"):
            RenderConfig().with_settings([bad])


def test_triples_are_uint8_and_never_flipped_vertically():
    photo = _photo()
    for seed in range(6):
        rainy, clean, mask = make_triple(photo, (96, 64), np.random.default_rng(seed), PLAIN)
        assert rainy.shape == clean.shape == (64, 96, 3) and mask.shape == (64, 96)
        assert rainy.dtype == clean.dtype == mask.dtype == np.uint8
        assert clean[:8].mean() > clean[-8:].mean() + 40, "the sky stays on top"


def test_contact_sheet_tiles_thumbnails():
    images = [np.full((48, 64, 3), v, np.uint8) for v in (10, 20, 30)]
    sheet = contact_sheet(images, columns=2, thumb_width=32)
    assert sheet.shape == (48, 64, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 40, 0] == 20 and sheet[30, 0, 0] == 30 and sheet[30, 40, 0] == 0


def test_split_is_stable_and_roughly_ten_percent():
    names = [f"photo_{i}.jpg" for i in range(2000)]
    val = [n for n in names if split_of(n) == "val"]
    assert 120 < len(val) < 280
    assert val == [n for n in names if split_of(n) == "val"]


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("night_prob=5", "night_prob=5.0: a probability"),
        ("coverage=0.7,0.3", "coverage=0.7,0.3: a range is LOW,HIGH with LOW ≤ HIGH"),
        ("coverage=0.5,1.5", "coverage=0.5,1.5: a fraction"),
        ("radius=-3,40", "radius=-3.0,40.0: must not be negative"),
        ("jpeg_quality=60,101", "jpeg_quality=60,101: a JPEG quality"),
    ],
)
def test_settings_the_renderer_cannot_draw_from_are_refused_by_name(setting: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RenderConfig().with_settings([setting])


def test_sizes_beyond_the_renderers_memory_are_refused_before_any_work() -> None:
    check_size((8192, 2048))
    check_size((4096, 4096))
    for size in ((8193, 16), (16, 8193), (4097, 4096), (100_000, 100_000)):
        with pytest.raises(ValueError, match="at most 8192 pixels a side and 16.8 MP"):
            check_size(size)
    with pytest.raises(ValueError, match="larger than the renderer takes"):  # at the call, not at the first sample
        render_samples([Path("no/such/photo.png")], 1, (8193, 16))


def _said(result: Result) -> str:
    """The output with its lines joined (rich and click wrap them at the terminal's width)."""
    return " ".join(result.output.split())


def _photos(folder: Path, split: str = "all", count: int = 2) -> Path:
    """``count`` tiny photos named so that they fall in ``split`` ('all': any name)."""
    names = (f"p{i}.png" for i in range(1000))
    for name in [n for n in names if split in ("all", split_of(n))][:count]:
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), _photo(48, 64))
    return folder


TINY = ("--size", "32x24")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("extra", [("--count", "1"), ("--preview", "1")])
def test_cli_refuses_a_size_beyond_the_limit_as_a_usage_error(tmp_path: Path, extra: tuple[str, ...]) -> None:
    out = tmp_path / ("sheet.png" if "--preview" in extra else "set")
    result = run("synth", _photos(tmp_path / "photos"), "-o", out, "--size", "8193x16", *extra)
    assert "'--size': 8193x16 is larger than the renderer takes" in assert_fails(result, 2, one_line=False)
    assert not out.exists()
    assert "8192 px a side and 16.8 MP" in _said(run("synth", "--help"))


def test_cli_fails_when_a_triple_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "set" / "data" / "0_rain.png").mkdir(parents=True)  # in the way of the first file
    result = run("synth", _photos(tmp_path / "photos"), "-o", tmp_path / "set", "--count", "1", *TINY)
    assert "0_rain.png: cannot write (Is a directory)" in assert_fails(result, 1, one_line=False)
    assert not [p for p in (tmp_path / "set").rglob("*") if p.name.startswith(".")], "no temp file left"


def test_cli_refuses_an_old_dataset_unless_told_to_overwrite_it(tmp_path: Path) -> None:
    photos, out = _photos(tmp_path / "photos"), tmp_path / "set"
    assert run("synth", photos, "-o", out, "--count", "3", *TINY).exit_code == 0
    (out / "data" / "notes.txt").write_text("mine")
    before = _digest(out)
    result = run("synth", photos, "-o", out, "--count", "1", *TINY)
    assert "set: already holds 3 triples: add --overwrite" in assert_fails(result, 1)
    assert _digest(out) == before, "nothing touched"
    result = run("synth", photos, "-o", out, "--count", "1", "--overwrite", *TINY)
    assert result.exit_code == 0 and "✓ 1 triple from 2 photos" in _said(result)
    assert "(replacing 3 older triples)" in _said(result)
    assert _files(out) == {"data/0_rain.png", "gt/0_clean.png", "mask/0_mask.png", "data/notes.txt"}


def test_cli_says_why_there_is_nothing_to_render(tmp_path: Path) -> None:
    missing = assert_fails(run("synth", tmp_path / "nowhere", "-o", tmp_path / "x"), 1)
    assert "nowhere: no photos found: the folder does not exist" in missing
    photos = _photos(tmp_path / "photos", split="train", count=3)
    elsewhere = assert_fails(run("synth", photos, "-o", tmp_path / "x", "--split", "val", *TINY), 1)
    assert "none of its 3 photos is in the val split (about 10% of photos" in elsewhere
    assert elsewhere.endswith("add photos, or use --split all")
    assert not (tmp_path / "x").exists()


def test_cli_counts_in_the_singular(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", count=1)
    result = run("synth", photos, "-o", tmp_path / "set", "--count", "1", *TINY)
    assert result.exit_code == 0 and "✓ 1 triple from 1 photo in" in _said(result), result.output
    result = run("synth", photos, "-o", tmp_path / "sheet.png", "--preview", "1", *TINY)
    assert result.exit_code == 0 and "✓ 1 render (" in _said(result), result.output


def test_the_help_examples_are_the_readmes() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    examples = [line.strip() for line in run("synth", "--help").output.splitlines() if "-o data/" in line]
    assert len(examples) == 2 and all(example in readme for example in examples)
