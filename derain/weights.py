"""Weights I/O: our shipped format, the official release's ``gen.pkl``, training checkpoints.

Our format is a safetensors file of fp16 tensors (half the size of fp32, exact enough for
inference) whose metadata records everything needed to rebuild and trust the model: the
architecture config, the channel order, what it was trained on and how well it scored. Shipped
files are listed with their sha256 in ``weights/manifest.json``, checked on every load.
Pickle-based files are read with ``torch.load(weights_only=True)``: a weights file can never
run code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .imageio import write_atomic
from .model import Generator, GeneratorConfig

FORMAT_NAME = "derain-generator"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class WeightsError(ValueError):
    """A weights file is missing, corrupt, or does not fit the architecture."""


@dataclass
class WeightsInfo:
    """What a weights file says about itself."""

    config: GeneratorConfig = field(default_factory=GeneratorConfig)
    channel_order: str = "RGB"
    """Channel order the network was trained on: 'RGB' (ours) or 'BGR' (official release)."""
    source: str = ""
    """Where the weights came from (a path or a shipped name)."""
    meta: dict = field(default_factory=dict)
    """Free-form provenance: training data, steps, validation scores, version."""

    @property
    def gate(self) -> bool:
        """Whether these weights were validated with the engine's attention gate on (``meta["gate"]``),
        and so run with it unless told otherwise. The official weights and fresh runs were not; a
        fine-tune or an average of gated weights inherits it."""
        return bool(self.meta.get("gate", False))


# Official flat key prefix -> our module path. Order matters only for readability.
_OFFICIAL_RULES: list[tuple[str, str]] = [
    (r"det_conv0\.0\.", "attentive_rnn.stem.0."),
    (r"det_conv([1-9])\.([02])\.", "attentive_rnn.blocks.{0}.body.{1}."),
    (r"conv_i\.0\.", "attentive_rnn.lstm.input_gate."),
    (r"conv_f\.0\.", "attentive_rnn.lstm.forget_gate."),
    (r"conv_g\.0\.", "attentive_rnn.lstm.cell_gate."),
    (r"conv_o\.0\.", "attentive_rnn.lstm.output_gate."),
    (r"det_conv_mask\.0\.", "attentive_rnn.attention_head."),
    (r"diconv([1-9])\.0\.", "autoencoder.context.{0}.0."),
    (r"deconv([12])\.0\.", "autoencoder.deconv{0}.deconv."),
    (r"conv(10|[1-9])\.0\.", "autoencoder.conv{0}.0."),
    (r"outframe1\.0\.", "autoencoder.side_quarter."),
    (r"outframe2\.0\.", "autoencoder.side_half."),
    (r"output\.0\.", "autoencoder.output."),
]
_ONE_BASED = {"attentive_rnn.blocks.{0}.body.{1}.", "autoencoder.context.{0}.0."}


def _rename_official(key: str) -> str | None:
    for pattern, target in _OFFICIAL_RULES:
        m = re.match(pattern, key)
        if m:
            groups = list(m.groups())
            if target in _ONE_BASED:
                groups[0] = str(int(groups[0]) - 1)
            return target.format(*groups) + key[m.end() :]
    return None


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official ``gen.pkl`` state_dict to our module layout."""
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from nn.DataParallel
        new = _rename_official(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise WeightsError(f"unexpected keys for the official layout: {_few(unknown)}")
    return out


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our layout back to the official flat names (the inverse of :func:`from_official`)."""
    names = (
        ["det_conv0.0.", "conv_i.0.", "conv_f.0.", "conv_g.0.", "conv_o.0.", "det_conv_mask.0."]
        + [f"det_conv{n}.{j}." for n in range(1, 10) for j in (0, 2)]
        + [f"conv{n}.0." for n in range(1, 11)]
        + [f"diconv{n}.0." for n in range(1, 10)]
        + ["deconv1.0.", "deconv2.0.", "outframe1.0.", "outframe2.0.", "output.0."]
    )
    inverse = {_rename_official(n): n for n in names}
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        official = inverse.get(prefix + ".")
        if official is None:
            raise WeightsError(f"{key} has no official counterpart")
        out[official + leaf] = value
    return out


def _few(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def build_model(state: dict[str, torch.Tensor], config: GeneratorConfig) -> Generator:
    """Instantiate the generator and load ``state`` strictly, with errors that name the problem."""
    model = Generator(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise WeightsError("weights do not match the generator; " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise WeightsError(f"shape mismatch (file vs model): {_few(bad, 3)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


# --- our format -----------------------------------------------------------------------------


def save_weights(model: Generator, path: Path, meta: dict | None = None, channel_order: str = "RGB") -> Path:
    """Write ``model`` as fp16 safetensors with its config and provenance in the metadata."""
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "channel_order": channel_order,
        "meta": meta or {},
    }
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # through write_atomic, as images are: safetensors' own save_file leaves the file 0600
    write_atomic(path, save(tensors, metadata={"derain": json.dumps(header)}))
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    try:
        state = load_file(str(path))
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    raw = header.get("__metadata__", {}).get("derain")
    if raw is None:
        return state, WeightsInfo(source=str(path))
    info = json.loads(raw)
    if info.get("format") != FORMAT_NAME or info.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported weights format {info.get('format')} v{info.get('format_version')}")
    try:
        config = GeneratorConfig.from_dict(info["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad architecture config in metadata ({exc})") from None
    return state, WeightsInfo(config, info.get("channel_order", "RGB"), str(path), info.get("meta", {}))


def _pickle_problem(path: Path, exc: Exception) -> str:
    """What is wrong, in words: torch's own text names internals (a pickle memo key, a miniz error)
    or suggests turning weights_only off, which would let the file run code."""
    text = str(exc)
    if path.stat().st_size == 0:
        return "the file is empty"
    if "GLOBAL" in text:  # weights_only met a class or function reference
        return "it holds Python objects besides tensors, which could run code; derain loads only plain weights"
    if "zip archive" in text:
        return "a damaged or truncated PyTorch file; download or copy it again"
    return "neither a PyTorch nor a safetensors file"


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """The official ``gen.pkl`` (flat state_dict, BGR) or one of our training checkpoints."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise WeightsError(f"{path}: not a loadable weights file ({_pickle_problem(path, exc)})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state_dict, found {type(obj).__name__}")
    if "generator" in obj and "config" in obj:  # our training checkpoint: prefer EMA weights
        config = GeneratorConfig.from_dict(obj["config"])
        state = obj.get("ema") or obj["generator"]
        meta = {"checkpoint_step": obj.get("step"), **({"gate": True} if obj.get("gate") else {})}
        return state, WeightsInfo(config, "RGB", str(path), meta)
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors")
    return from_official(obj), WeightsInfo(GeneratorConfig(), "BGR", str(path), {"release": "official gen.pkl"})


# --- shipped weights --------------------------------------------------------------------------


def shipped_dir() -> Path:
    """Folder of the shipped weights: installed as package data, or ``weights/`` in a checkout."""
    try:
        return Path(str(resources.files("derain_weights")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "weights"


def read_manifest(folder: Path | None = None) -> dict:
    folder = folder or shipped_dir()
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the weights manifest in {folder} ({exc})") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_shipped(name: str | None, folder: Path | None = None) -> Path:
    """Path of a shipped weights file by short name (None: the default), checksum verified."""
    folder = folder or shipped_dir()
    manifest = read_manifest(folder)
    name = name or manifest["default"]
    entry = manifest["files"].get(name)
    if entry is None:
        known = ", ".join(sorted(manifest["files"])) or "none"
        raise WeightsError(f"no shipped weights named '{name}' (shipped: {known}); or give a file path")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"shipped weights file {path} is missing; reinstall derain")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"checksum mismatch for {path}: expected {entry['sha256'][:12]}…, got {actual[:12]}…")
    return path


def load_weights(weights: str | Path | None = None) -> tuple[Generator, WeightsInfo]:
    """Load a generator from a shipped name (None: default) or a file path.

    Raises :class:`WeightsError` with a one-line reason for anything that is not usable.
    """
    if weights is not None and not str(weights).strip():
        raise WeightsError("weights: an empty name; give a shipped name, a file path, or None for the default")
    path = Path(weights) if weights is not None else None
    if path is None or (not path.exists() and path.suffix == "" and "/" not in str(weights)):
        path = resolve_shipped(None if weights is None else str(weights))
        source = weights or "default"
    else:
        source = str(path)
    if not path.is_file():
        shipped = path.suffix and not path.exists() and path.stem in read_manifest()["files"]
        hint = f" (shipped weights go by name alone: {path.stem})" if shipped else ""
        raise WeightsError(f"weights file not found: {path}{hint}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: file is empty")
    with open(path, "rb") as f:
        head = f.read(16)
    is_safetensors = path.suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{")
    state, info = _read_safetensors(path) if is_safetensors else _read_pickle(path)
    info.source = str(source)
    return build_model(state, info.config), info


def average_weights(sources: list[str | Path], path: Path) -> Path:
    """Write the mean of several weights files of one architecture (a "model soup").

    Two runs that end near the same optimum often average to a better model than either; the
    earlier shipped ``derain-v5`` and ``derain-v7`` were such means. A source listed twice counts
    twice: ``[run, shipped, shipped]`` is the 1:2 mean that keeps most of the shipped behaviour.
    """
    # Each distinct source is loaded once and recorded once, with how many parts of the mean it
    # is: soups of soups (1:2 with the shipped weights, each generation) would otherwise repeat
    # whole provenance trees.
    parts = Counter(str(source) for source in sources)
    models = {source: load_weights(source) for source in parts}
    target, info = next(iter(models.values()))
    for _, other in models.values():
        if (other.config, other.channel_order) != (info.config, info.channel_order):
            raise WeightsError(f"{other.source}: a different architecture from {info.source}; cannot average")
    states = [models[str(source)][0].state_dict() for source in sources]
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.stack([state[name].float() for state in states]).mean(0))
    provenance = [{"file": source, "parts": count, **models[source][1].meta} for source, count in parts.items()]
    gate = {"gate": True} if all(meta.gate for _, meta in models.values()) else {}  # validated with it, all
    return save_weights(target, path, {"average_of": provenance, **gate}, info.channel_order)


def ship_weights(
    src: Path, name: str, folder: Path | None = None, trained_on: str = "", validation: str = "", default: bool = True
) -> Path:
    """Copy an exported weights file into the shipped folder and record it in the manifest."""
    folder = folder or shipped_dir()
    load_weights(src)  # refuse to ship anything that does not load
    dst = folder / f"{name}.safetensors"
    dst.write_bytes(Path(src).read_bytes())
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    manifest["files"][name] = {
        "file": dst.name,
        "sha256": sha256_of(dst),
        "size": dst.stat().st_size,
        "trained_on": trained_on,
        "validation": validation,
    }
    if default or "default" not in manifest:
        manifest["default"] = name
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return dst
