import cv2
import numpy as np
import pytest

from derain.engine import Derainer
from derain.evaluate import evaluate, predictions_by_number
from derain.metrics import psnr, ssim


def _dataset(root, rng, count=3, size=(30, 23)):
    for d in ("data", "gt", "pred"):
        (root / d).mkdir(parents=True)
    expected = []
    for i in range(1, count + 1):
        clean = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
        rainy = np.clip(clean.astype(int) + rng.integers(-30, 30, clean.shape), 0, 255).astype(np.uint8)
        pred = np.clip(clean.astype(int) + rng.integers(-5, 5, clean.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "data" / f"{i}_rain.png"), rainy)
        cv2.imwrite(str(root / "gt" / f"{i}_clean.png"), clean)
        cv2.imwrite(str(root / "pred" / f"{i}_derained.png"), pred)
        y = [cv2.cvtColor(im[:20, :28], cv2.COLOR_BGR2YCrCb)[..., 0] for im in (pred, clean, rainy)]
        expected.append((psnr(y[0], y[1]), ssim(y[0], y[1]), psnr(y[2], y[1])))
    return expected


def test_pred_scores_follow_the_protocol(tmp_path):
    expected = _dataset(tmp_path, np.random.default_rng(0))
    report = evaluate(tmp_path, pred_dir=tmp_path / "pred")
    assert [s.name for s in report.images] == ["1_rain.png", "2_rain.png", "3_rain.png"]
    for score, (p, s, ip) in zip(report.images, expected):
        assert score.psnr == pytest.approx(p, abs=1e-9) and score.ssim == pytest.approx(s, abs=1e-12)
        assert score.input_psnr == pytest.approx(ip, abs=1e-9)
    assert report.mean_psnr == pytest.approx(np.mean([e[0] for e in expected]))
    d = report.to_dict()
    assert set(d) >= {"mean_psnr", "mean_ssim", "images"} and set(d["images"][0]) >= {"name", "psnr", "ssim"}


def test_missing_predictions_are_reported(tmp_path):
    _dataset(tmp_path, np.random.default_rng(1))
    (tmp_path / "pred" / "2_derained.png").unlink()
    with pytest.raises(ValueError, match="no prediction for pair.*2"):
        evaluate(tmp_path, pred_dir=tmp_path / "pred")


def test_predictions_are_matched_by_leading_number(tmp_path):
    for name in ("3.png", "12_rain.jpg", "x_5.png", "7_out.txt"):
        (tmp_path / name).write_bytes(b"")
    assert {n: p.name for n, p in predictions_by_number(tmp_path).items()} == {3: "3.png", 12: "12_rain.jpg"}


def test_running_the_model_scores_its_output(tmp_path, tiny_weights):
    _dataset(tmp_path, np.random.default_rng(2), count=2)
    report = evaluate(tmp_path, derainer=Derainer(tiny_weights, device="cpu"))
    assert len(report.images) == 2 and all(np.isfinite(s.psnr) for s in report.images)


def test_pairs_without_rain_are_listed_but_not_averaged(tmp_path):
    expected = _dataset(tmp_path, np.random.default_rng(3))
    (tmp_path / "data" / "2_rain.png").write_bytes((tmp_path / "gt" / "2_clean.png").read_bytes())
    report = evaluate(tmp_path, pred_dir=tmp_path / "pred")
    assert len(report.images) == 3 and [s.name for s in report.scored] == ["1_rain.png", "3_rain.png"]
    assert report.mean_psnr == pytest.approx((expected[0][0] + expected[2][0]) / 2)
    assert np.isfinite(report.input_mean_psnr) and report.to_dict()["averaged_images"] == 2
    # how far the output strays from a drop-free input: the ship rule's third figure
    assert [s.name for s in report.drop_free] == ["2_rain.png"]
    assert report.drop_free_psnr == pytest.approx((expected[1][0], expected[1][0]))
    assert report.to_dict()["drop_free_psnr"] == pytest.approx({"mean": expected[1][0], "min": expected[1][0]})
    assert evaluate(tmp_path, pred_dir=tmp_path / "pred").drop_free_psnr is not None
    (tmp_path / "data" / "2_rain.png").write_bytes((tmp_path / "pred" / "2_derained.png").read_bytes())
    assert evaluate(tmp_path, pred_dir=tmp_path / "pred").drop_free_psnr is None


def test_attention_is_scored_where_masks_exist(tmp_path, tiny_weights):
    _dataset(tmp_path, np.random.default_rng(4), count=3)
    (tmp_path / "mask").mkdir()
    derainer = Derainer(tiny_weights, device="cpu")
    overlaps = []
    for i in (1, 2):  # pair 3 has no mask
        mask = np.zeros((23, 30), np.uint8)
        mask[5 * i : 15, 3 : 10 * i] = 255
        cv2.imwrite(str(tmp_path / "mask" / f"{i}_mask.png"), mask)
        rainy = cv2.imread(str(tmp_path / "data" / f"{i}_rain.png"))[..., ::-1].copy()
        attention = derainer.attention(rainy)[-1]
        predicted, truth = attention >= 0.5, mask > 0
        overlaps.append((int((predicted & truth).sum()), int((predicted | truth).sum())))
    report = evaluate(tmp_path, derainer=derainer)
    assert [s.attention_iou for s in report.images[:2]] == pytest.approx([i / u for i, u in overlaps])
    assert report.images[2].attention_iou is None
    assert report.attention_iou == pytest.approx(sum(i for i, _ in overlaps) / sum(u for _, u in overlaps))
    d = report.to_dict()
    assert d["attention_iou"] == report.attention_iou and "attention_overlap" not in d["images"][0]
    # scoring finished predictions has no attention to score
    assert evaluate(tmp_path, pred_dir=tmp_path / "pred").attention_iou is None
