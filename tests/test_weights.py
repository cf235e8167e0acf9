import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from derain.engine import Derainer
from derain.model import GeneratorConfig
from derain.weights import (
    WeightsError,
    average_weights,
    from_official,
    load_weights,
    read_manifest,
    resolve_shipped,
    save_weights,
    sha256_of,
    to_official,
)

from .conftest import TINY, random_image, tiny_model

OFFICIAL = GeneratorConfig()


def test_official_layout_has_the_release_key_names():
    keys = set(to_official(tiny_model(config=OFFICIAL).state_dict()))
    assert {
        "det_conv0.0.weight",
        "det_conv5.2.bias",
        "conv_i.0.weight",
        "det_conv_mask.0.weight",
        "diconv4.0.weight",
        "deconv2.0.weight",
        "outframe1.0.bias",
        "output.0.weight",
        "conv10.0.bias",
    } <= keys
    assert len(keys) == 70


def test_official_gen_pkl_loads_as_bgr(tmp_path):
    model = tiny_model(config=OFFICIAL)
    path = tmp_path / "gen.pkl"
    torch.save(to_official(model.state_dict()), path)
    loaded, info = load_weights(path)
    assert info.channel_order == "BGR"
    assert not info.config.residual
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_official_weights_see_bgr_and_return_rgb(tmp_path, rng):
    model = tiny_model(config=OFFICIAL)
    path = tmp_path / "gen.pkl"
    torch.save({"module." + k: v for k, v in to_official(model.state_dict()).items()}, path)  # DataParallel
    image = random_image(rng, 16, 20)
    ours = Derainer(path, device="cpu", precision="fp32", tile=0).clean(image)
    bgr = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = model(bgr).image[0].permute(1, 2, 0).numpy()[..., ::-1]
    expected = np.clip(np.rint(expected * 255), 0, 255)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_our_format_round_trips_in_fp16_with_metadata(tmp_path):
    model = tiny_model()
    path = save_weights(model, tmp_path / "w.safetensors", {"steps": 7})
    loaded, info = load_weights(path)
    assert info.config == TINY and info.channel_order == "RGB" and info.meta == {"steps": 7}
    for key, value in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[key], value.half().float())
    assert path.stat().st_size < sum(v.numel() * 4 for v in model.state_dict().values())


def test_saved_weights_get_the_usual_permissions_and_leave_no_temp_file(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = save_weights(tiny_model(), tmp_path / "w.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = to_official(tiny_model(config=OFFICIAL).state_dict())
    del state["conv3.0.weight"]
    torch.save(state, tmp_path / "a.pkl")
    with pytest.raises(WeightsError, match="missing keys: autoencoder.conv3.0.weight"):
        load_weights(tmp_path / "a.pkl")
    state["surprise.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "b.pkl")
    with pytest.raises(WeightsError, match="unexpected keys.*surprise"):
        load_weights(tmp_path / "b.pkl")


def test_shape_mismatch_is_named(tmp_path):
    state = to_official(tiny_model(config=OFFICIAL).state_dict())
    state["conv2.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "gen.pkl")
    with pytest.raises(WeightsError, match="shape mismatch.*conv2"):
        load_weights(tmp_path / "gen.pkl")


@pytest.mark.parametrize("content", [b"", b"not weights at all" * 10, b"PK\x03\x04garbage"])
def test_corrupt_files_raise_weights_error(tmp_path, content):
    path = tmp_path / "gen.pkl"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        load_weights(path)


def test_truncated_safetensors_raise_weights_error(tmp_path, tiny_weights):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickles_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1.0.weight": _Exploit()}, protocol=2))  # torch.save's protocol
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        load_weights(path)


def _shipped_folder(tmp_path: Path, weights: Path, sha: str) -> Path:
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes(weights.read_bytes())
    manifest = {"default": "tiny", "files": {"tiny": {"file": "tiny.safetensors", "sha256": sha, "size": 1}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_shipped_name_with_its_extension_or_an_empty_name_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where no such file lies
    default = read_manifest()["default"]
    with pytest.raises(WeightsError, match=rf"not found: {default}.safetensors \(shipped weights go by name alone"):
        load_weights(f"{default}.safetensors")
    with pytest.raises(WeightsError, match="an empty name"):
        load_weights("")


def test_shipped_weights_are_checksum_verified(tmp_path, tiny_weights):
    good = _shipped_folder(tmp_path, tiny_weights, sha256_of(tiny_weights))
    assert resolve_shipped(None, good) == good / "tiny.safetensors"
    assert resolve_shipped("tiny", good) == good / "tiny.safetensors"
    with pytest.raises(WeightsError, match="no shipped weights named 'other'"):
        resolve_shipped("other", good)
    (good / "tiny.safetensors").write_bytes(tiny_weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_shipped(None, good)


def test_averaging_takes_the_mean_of_every_tensor(tmp_path):
    paths = [save_weights(tiny_model(seed), tmp_path / f"{seed}.safetensors", {"steps": seed}) for seed in (1, 2)]
    mean, info = load_weights(average_weights(paths, tmp_path / "mean.safetensors"))
    (a, _), (b, _) = (load_weights(p) for p in paths)
    assert info.config == TINY
    assert info.meta == {"average_of": [{"file": str(p), "parts": 1, "steps": seed} for p, seed in zip(paths, (1, 2))]}
    for key, value in mean.state_dict().items():
        expected = (a.state_dict()[key] + b.state_dict()[key]) / 2
        assert torch.allclose(value, expected, atol=1e-3), key
    other = save_weights(tiny_model(config=OFFICIAL), tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="different architecture"):
        average_weights([paths[0], other], tmp_path / "bad.safetensors")


def test_a_repeated_source_weighs_more_and_is_recorded_once(tmp_path):
    paths = [save_weights(tiny_model(seed), tmp_path / f"{seed}.safetensors", {"steps": seed}) for seed in (1, 2)]
    mean, info = load_weights(average_weights([paths[0], paths[1], paths[1]], tmp_path / "mean.safetensors"))
    (a, _), (b, _) = (load_weights(p) for p in paths)
    assert info.meta["average_of"] == [
        {"file": str(paths[0]), "parts": 1, "steps": 1},
        {"file": str(paths[1]), "parts": 2, "steps": 2},
    ]
    for key, value in mean.state_dict().items():
        expected = (a.state_dict()[key] + 2 * b.state_dict()[key]) / 3
        assert torch.allclose(value, expected, atol=1e-3), key


def test_an_average_runs_with_the_gate_only_when_all_its_weights_did(tmp_path):
    gated, plain = (
        save_weights(tiny_model(seed), tmp_path / f"{seed}.safetensors", {"gate": gate})
        for seed, gate in ((1, True), (2, False))
    )
    assert load_weights(average_weights([gated, gated], tmp_path / "both.safetensors"))[1].gate
    assert not load_weights(average_weights([gated, plain], tmp_path / "mixed.safetensors"))[1].gate


def test_official_key_mapping_is_invertible():
    state = tiny_model(config=OFFICIAL).state_dict()
    assert from_official(to_official(state)).keys() == state.keys()


def test_shipping_records_checksum_and_provenance(tmp_path, tiny_weights):
    from derain.weights import read_manifest, ship_weights

    folder = tmp_path / "shipped"
    folder.mkdir()
    ship_weights(tiny_weights, "tiny-v1", folder, trained_on="test pairs", validation="+0 dB")
    entry = read_manifest(folder)["files"]["tiny-v1"]
    assert read_manifest(folder)["default"] == "tiny-v1"
    assert entry["sha256"] == sha256_of(folder / "tiny-v1.safetensors") and entry["trained_on"] == "test pairs"
    model, _ = load_weights(resolve_shipped(None, folder))
    assert model.config == TINY
    with pytest.raises(WeightsError):
        ship_weights(tmp_path / "missing.safetensors", "x", folder)
