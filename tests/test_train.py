import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from derain.engine import Derainer
from derain.train import loop
from derain.train.data import PairedImages, UnpairedImages, find_pairs, mask_from_difference
from derain.train.loop import TrainConfig, Trainer, bf16_native, lr_at, train, validate
from derain.train.losses import attention_loss, multiscale_loss, ssim_loss
from derain.weights import load_weights, save_weights

from .conftest import TINY, tiny_model


def _write_pairs(root, count=3, size=(40, 32), with_masks=True, seed=0):
    rng = np.random.default_rng(seed)
    for d in ("data", "gt", "mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        clean = rng.integers(0, 200, (size[1], size[0], 3)).astype(np.uint8)
        rainy = clean.copy()
        rainy[4:12, 6:14] = 255
        cv2.imwrite(str(root / "data" / f"{i + 1}_rain.png"), rainy)
        cv2.imwrite(str(root / "gt" / f"{i + 1}_clean.png"), clean)
        if with_masks:
            cv2.imwrite(str(root / "mask" / f"{i + 1}_mask.png"), mask_from_difference(rainy, clean))


def test_pairs_are_matched_by_number(tmp_path):
    _write_pairs(tmp_path, count=3)
    (tmp_path / "data" / "9_rain.png").write_bytes((tmp_path / "data" / "1_rain.png").read_bytes())  # no gt
    (tmp_path / "gt" / "notes.txt").write_text("ignored")
    pairs = find_pairs(tmp_path)
    assert [p.number for p in pairs] == [1, 2, 3]
    assert pairs[0].rainy.name == "1_rain.png" and pairs[0].clean.name == "1_clean.png"


def test_missing_masks_come_from_the_papers_threshold(tmp_path):
    _write_pairs(tmp_path, count=1, with_masks=False)
    data = PairedImages(tmp_path)
    rainy, clean = data.rainy[0].astype(int), data.clean[0].astype(int)
    expected = (np.abs(rainy - clean).max(axis=2) > 30) * 255
    assert np.array_equal(data.masks[0], expected)
    assert data.masks[0][4:12, 6:14].all()


def test_batches_have_the_right_shapes_and_ranges(tmp_path):
    _write_pairs(tmp_path)
    batch = PairedImages(tmp_path).batch(np.random.default_rng(0), 5, 16)
    assert batch["rainy"].shape == batch["clean"].shape == (5, 3, 16, 16)
    assert batch["mask"].shape == (5, 1, 16, 16)
    assert 0 <= batch["rainy"].min() and batch["rainy"].max() <= 1
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}


def test_a_patch_larger_than_pairs_of_mixed_sizes_is_cut_to_the_smallest(tmp_path):
    _write_pairs(tmp_path / "small", count=1, size=(30, 22))
    _write_pairs(tmp_path / "large", count=1, size=(48, 40))
    for d in ("data", "gt", "mask"):  # one folder: pair 1 at 30×22, pair 2 at 48×40
        for f in (tmp_path / "large" / d).iterdir():
            f.rename(tmp_path / "small" / d / f.name.replace("1_", "2_"))
    batch = PairedImages(tmp_path / "small").batch(np.random.default_rng(0), 6, 64)
    assert batch["rainy"].shape == batch["clean"].shape == (6, 3, 20, 20)  # 22, down to a multiple of 4


def test_identity_crops_are_drop_free_pairs_and_the_rest_stay_rendered(tmp_path):
    _write_pairs(tmp_path)
    batch = PairedImages(tmp_path).batch(np.random.default_rng(0), 64, 32, identity=0.5)
    same = (batch["rainy"] == batch["clean"]).flatten(1).all(dim=1)
    empty = batch["mask"].flatten(1).amax(dim=1) == 0
    assert 16 < int(same.sum()) < 48  # about half, drawn at random
    assert torch.equal(same, empty)  # a drop-free input has an empty mask; a rendered crop keeps its drop
    assert torch.equal(batch["drop_free"], same), "and the batch says which crops are drop-free"
    plain = PairedImages(tmp_path).batch(np.random.default_rng(0), 64, 32)  # each crop holds the drop
    assert not (plain["rainy"] == plain["clean"]).flatten(1).all(dim=1).any()


def test_attention_loss_weighs_later_steps_more():
    mask = torch.ones(1, 1, 4, 4)
    maps = [torch.zeros(1, 1, 4, 4) for _ in range(4)]
    assert math.isclose(attention_loss(maps, mask).item(), 1 + 0.8 + 0.64 + 0.512, rel_tol=1e-6)
    maps[-1] = mask.clone()
    assert math.isclose(attention_loss(maps, mask).item(), 0.8 + 0.64 + 0.512, rel_tol=1e-6)


def test_attention_loss_scales_each_crops_errors_by_its_weight():
    mask = torch.zeros(2, 1, 4, 4)
    maps = [torch.zeros(2, 1, 4, 4), torch.cat([torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)])]
    plain = attention_loss(maps, mask)
    assert math.isclose(plain.item(), 0.5, rel_tol=1e-6), "crop 0 wrong everywhere at the last step: half the mean"
    assert torch.equal(attention_loss(maps, mask, crop_weights=torch.ones(2)), plain)
    assert math.isclose(attention_loss(maps, mask, crop_weights=torch.tensor([4.0, 1.0])).item(), 2.0, rel_tol=1e-6)
    assert attention_loss(maps, mask, crop_weights=torch.tensor([0.0, 9.0])).item() == 0


def test_the_identity_map_weight_scales_the_map_loss_of_drop_free_crops(tmp_path):
    _write_pairs(tmp_path)
    init = save_weights(tiny_model(), tmp_path / "init.safetensors")

    def first_losses(**options):
        cfg = TrainConfig(batch=2, patch=16, init_weights=str(init), mixed_precision=False, **options)
        return Trainer(cfg, tmp_path, tmp_path / "run").train_step()

    plain, weighted = first_losses(identity_fraction=1.0), first_losses(identity_fraction=1.0, identity_map_weight=4.0)
    assert plain["att"] > 0 and math.isclose(weighted["att"], 4 * plain["att"], rel_tol=1e-5)
    assert math.isclose(weighted["ms"], plain["ms"], rel_tol=1e-6), "the image losses are left as they are"
    rendered = first_losses(identity_map_weight=4.0)  # no drop-free crops: the paper's loss
    assert math.isclose(rendered["att"], first_losses()["att"], rel_tol=1e-6)


def test_validation_scores_gated_outputs_and_the_worst_crop(tmp_path, monkeypatch):
    _write_pairs(tmp_path, count=2)
    data, model = PairedImages(tmp_path), tiny_model().eval()
    plain = validate(model, data, count=2, crop=32)
    assert plain["worst_psnr"] <= plain["psnr"] and plain["psnr"] != plain["input_psnr"]
    steps = model.config.steps
    monkeypatch.setattr(model.attentive_rnn, "forward", lambda image: [torch.zeros_like(image[:, :1])] * steps)
    gated = validate(model, data, count=2, crop=32, gate=True)
    assert gated["psnr"] == gated["input_psnr"], "a shut map lets the input through unchanged"


def test_multiscale_loss_compares_each_scale_with_the_downscaled_target():
    target = torch.zeros(1, 3, 8, 8)
    outputs = (torch.ones(1, 3, 2, 2), torch.ones(1, 3, 4, 4), torch.full((1, 3, 8, 8), 2.0))
    assert math.isclose(multiscale_loss(outputs, target, distance="l1").item(), 0.6 + 0.8 + 2.0, rel_tol=1e-6)
    assert math.isclose(multiscale_loss(outputs, target, distance="mse").item(), 0.6 + 0.8 + 4.0, rel_tol=1e-6)


def test_ssim_loss_is_zero_for_identical_images_and_grows_with_noise():
    x = torch.rand(1, 3, 16, 16)
    assert ssim_loss(x, x).item() < 1e-6
    assert ssim_loss(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)).item() > 0.1


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(50, cfg) < lr_at(20, cfg)


def test_a_short_run_writes_weights_that_derainer_loads_and_resumes(tmp_path):
    _write_pairs(tmp_path / "train")
    _write_pairs(tmp_path / "val", count=1, seed=1)
    tiny = TINY.to_dict() | {"residual": True}
    cfg = TrainConfig(
        steps=2,
        batch=2,
        patch=16,
        warmup=1,
        val_every=2,
        val_images=1,
        val_crop=32,
        checkpoint_every=1,
        generator=tiny,
        rnn_only_fraction=0.5,
        gan_weight=0.01,
    )
    logs = []
    trainer = train(cfg, tmp_path / "train", tmp_path / "run", tmp_path / "val", on_log=logs.append)
    assert trainer.step == 2 and logs[-1].validation is not None
    for name in ("checkpoint.pt", "final.safetensors", "best.safetensors"):
        assert (tmp_path / "run" / name).is_file()
    image = np.zeros((12, 20, 3), np.uint8)
    for weights in ("final.safetensors", "checkpoint.pt"):
        derainer = Derainer(tmp_path / "run" / weights, device="cpu")
        assert derainer.weights_info.config.rnn_width == TINY.rnn_width
        assert derainer.clean(image).shape == image.shape
    cfg.steps = 3
    assert train(cfg, tmp_path / "train", tmp_path / "run", tmp_path / "val").step == 3, "resumed from step 2"


def test_resuming_with_other_attention_steps_is_refused(tmp_path):
    _write_pairs(tmp_path / "train")
    cfg = TrainConfig(steps=1, batch=1, patch=16, generator=TINY.to_dict(), attention_steps=TINY.steps + 1)
    train(cfg, tmp_path / "train", tmp_path / "run")
    cfg.attention_steps, cfg.steps = None, 2
    changed = rf"different generator \(attention steps {TINY.steps + 1}, now {TINY.steps}\)"
    with pytest.raises(ValueError, match=changed):
        train(cfg, tmp_path / "train", tmp_path / "run")


def test_init_from_a_checkpoint_carries_weights_ema_and_moments_into_a_new_schedule(tmp_path):
    _write_pairs(tmp_path / "train")
    cfg = TrainConfig(steps=2, batch=2, patch=16, warmup=1, generator=TINY.to_dict(), rnn_only_fraction=0.0)
    train(cfg, tmp_path / "train", tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    cfg = TrainConfig(
        steps=4,
        batch=2,
        patch=16,
        rnn_lr_scale=3.0,
        rnn_only_fraction=1.0,
        attention_steps=TINY.steps + 1,
        init_weights=str(tmp_path / "run" / "checkpoint.pt"),
    )
    trainer = Trainer(cfg, tmp_path / "train", tmp_path / "run2")
    assert trainer.step == 0
    assert trainer.model.config.steps == TINY.steps + 1, "the shared ConvLSTM unrolled for one more step"
    for name, tensor in saved["generator"].items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    assert any(not torch.equal(saved["generator"][k], v) for k, v in saved["ema"].items()), "EMA differs from raw"
    for name, tensor in saved["ema"].items():
        assert torch.equal(trainer.ema.model.state_dict()[name], tensor), name
    moments = trainer.optimizer.state_dict()["state"]
    for index, state in saved["optimizer"]["state"].items():
        assert torch.equal(moments[index]["exp_avg"], state["exp_avg"])
    assert [g["lr_scale"] for g in trainer.optimizer.param_groups] == [3.0, 1.0], "this run's scales"
    assert "ms" in trainer.train_step(), "trained weights skip the attention-only phase"


def test_a_fine_tune_of_gated_weights_runs_with_the_gate_too(tmp_path):
    _write_pairs(tmp_path / "train")
    init = save_weights(tiny_model(), tmp_path / "init.safetensors", {"gate": True})
    cfg = TrainConfig(steps=2, batch=2, patch=16, warmup=1, init_weights=str(init))
    train(cfg, tmp_path / "train", tmp_path / "run")
    assert load_weights(tmp_path / "run" / "final.safetensors")[1].gate
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert load_weights(checkpoint)[1].gate, "the run's checkpoint loads gated too"
    train(dataclasses.replace(cfg, init_weights=str(checkpoint)), tmp_path / "train", tmp_path / "warm")
    assert load_weights(tmp_path / "warm" / "final.safetensors")[1].gate, "and so does a warm restart of it"
    fresh = dataclasses.replace(cfg, init_weights=None, generator=TINY.to_dict())
    train(fresh, tmp_path / "train", tmp_path / "fresh")
    assert not load_weights(tmp_path / "fresh" / "final.safetensors")[1].gate


def test_a_frozen_attention_keeps_the_initial_maps_and_trains_the_autoencoder(tmp_path):
    _write_pairs(tmp_path / "train")
    init = save_weights(tiny_model(), tmp_path / "init.safetensors", {"gate": True})
    start = load_weights(init)[0].state_dict()
    cfg = TrainConfig(steps=3, batch=2, patch=16, warmup=1, lr=1e-2, init_weights=str(init), freeze_attention=True)
    trainer = train(cfg, tmp_path / "train", tmp_path / "run")
    assert "att" not in trainer.train_step(), "no attention loss to learn from"
    trained = trainer.model.state_dict()
    rnn = [name for name in start if name.startswith("attentive_rnn.")]
    assert rnn and all(torch.equal(trained[name], start[name]) for name in rnn)
    assert any(not torch.equal(trained[name], start[name]) for name in start if name not in rnn)
    exported = load_weights(tmp_path / "run" / "final.safetensors")[0].state_dict()
    assert all(torch.equal(exported[name], start[name]) for name in rnn), "the EMA keeps them too"
    fresh = dataclasses.replace(cfg, init_weights=None, generator=TINY.to_dict())
    with pytest.raises(ValueError, match="trained weights"):
        Trainer(fresh, tmp_path / "train", tmp_path / "fresh")


def test_losses_are_computed_in_fp32_from_bf16_outputs():
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    maps = [mask.to(torch.bfloat16) * 0.9 for _ in range(2)]
    assert attention_loss(maps, mask).dtype == torch.float32
    target = torch.rand(1, 3, 8, 8)
    assert multiscale_loss((target.to(torch.bfloat16),), target, weights=(1.0,)).dtype == torch.float32
    assert ssim_loss(target.to(torch.bfloat16), target).dtype == torch.float32


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_mixed_precision_keeps_fp32_weights_and_finite_losses(tmp_path, mixed_precision):
    _write_pairs(tmp_path / "train")
    cfg = TrainConfig(steps=2, batch=2, patch=16, warmup=1, generator=TINY.to_dict(), mixed_precision=mixed_precision)
    trainer = Trainer(cfg, tmp_path / "train", tmp_path / "run")
    assert trainer.bf16 == (mixed_precision and bf16_native(torch.device("cpu")))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    parts = trainer.train_step()
    assert all(math.isfinite(v) for v in parts.values())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())), "weights moved"


def _write_photos(folder, count=2, size=(28, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        cv2.imwrite(str(folder / f"real_{i}.jpg"), rng.integers(0, 255, (size[1], size[0], 3)).astype(np.uint8))


def test_unpaired_photos_are_cropped_and_enlarged_to_the_patch(tmp_path):
    _write_photos(tmp_path / "real", size=(28, 20))
    (tmp_path / "real" / "notes.txt").write_text("not a photo")
    data = UnpairedImages(tmp_path / "real")
    assert len(data) == 2
    crops = data.batch(np.random.default_rng(0), 3, 24)
    assert crops.shape == (3, 3, 24, 24) and 0 <= crops.min() and crops.max() <= 1


def test_unpaired_training_shows_real_outputs_to_the_discriminator_and_exports_weights(tmp_path):
    _write_pairs(tmp_path / "train")
    _write_photos(tmp_path / "real")
    cfg = TrainConfig(
        steps=2,
        batch=1,
        patch=16,
        warmup=1,
        generator=TINY.to_dict(),
        rnn_only_fraction=0.0,
        gan_weight=0.01,
        unpaired_dir=str(tmp_path / "real"),
    )
    trainer = Trainer(cfg, tmp_path / "train", tmp_path / "run")
    d_before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    parts = trainer.train_step()
    assert parts["gan_real"] > 0 and math.isfinite(parts["gan_real"]), "outputs on real photos are judged"
    assert any(not torch.equal(b, p) for b, p in zip(d_before, trainer.discriminator.parameters()))
    trainer = train(cfg, tmp_path / "train", tmp_path / "run")
    derainer = Derainer(tmp_path / "run" / "final.safetensors", device="cpu")
    assert derainer.clean(np.zeros((12, 20, 3), np.uint8)).shape == (12, 20, 3)


def test_unpaired_folders_must_hold_photos_and_need_the_discriminator(tmp_path):
    _write_pairs(tmp_path / "train")
    (tmp_path / "empty").mkdir()
    base = {"steps": 1, "batch": 1, "patch": 16, "generator": TINY.to_dict(), "gan_weight": 0.01}
    with pytest.raises(ValueError, match="no photos found"):
        Trainer(TrainConfig(**base, unpaired_dir=str(tmp_path / "empty")), tmp_path / "train", tmp_path / "run")
    with pytest.raises(ValueError, match="no such folder"):
        Trainer(TrainConfig(**base, unpaired_dir=str(tmp_path / "nope")), tmp_path / "train", tmp_path / "run")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        Trainer(TrainConfig(**base, unpaired_dir=str(tmp_path / "bad")), tmp_path / "train", tmp_path / "run")
    _write_photos(tmp_path / "real")
    no_gan = base | {"gan_weight": 0.0}
    with pytest.raises(ValueError, match="gan weight"):
        Trainer(TrainConfig(**no_gan, unpaired_dir=str(tmp_path / "real")), tmp_path / "train", tmp_path / "run")
    assert not (tmp_path / "run").exists(), "no run folder is left behind"


def test_training_on_the_cpu_keeps_freed_memory_as_inference_does(tmp_path, monkeypatch):
    _write_pairs(tmp_path)
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(TrainConfig(batch=2, patch=16, mixed_precision=False), tmp_path, tmp_path / "run").train_step()
    assert calls == [1]
