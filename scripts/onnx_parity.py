"""How far the exported ONNX graph is from Derainer(precision="fp32", tile=0, gate=False) on real photos.

Each photo is cropped to an odd size (1 to 3 pixels off each edge's end, so every padding
remainder occurs), fed to onnxruntime as the README's ONNX section shows (reflect-padded to a
multiple of 4, cropped back) and to the engine; prints the largest difference per photo, in
1/255 units, before rounding (float outputs) and after (the 8-bit images users get).

    python scripts/onnx_parity.py /path/to/photos [--weights W] [--steps N] [--max-side PX]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from derain.engine import Derainer
from derain.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--weights")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--max-side", type=int, default=0, help="downscale larger photos to this edge first")
    args = parser.parse_args()
    derainer = Derainer(args.weights, device="cpu", precision="fp32", tile=0, steps=args.steps, gate=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(path, args.weights, args.steps)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the engine's (the CPUs it may use)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst_float = worst_u8 = 0.0
    for k, file in enumerate(sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))):
        rgb = cv2.imread(str(file), cv2.IMREAD_COLOR)[..., ::-1]
        if args.max_side and max(rgb.shape[:2]) > args.max_side:
            f = args.max_side / max(rgb.shape[:2])
            rgb = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(rgb[: rgb.shape[0] - 1 - (k // 3) % 3, : rgb.shape[1] - 1 - k % 3])
        h, w = rgb.shape[:2]
        padded = np.pad(rgb, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")  # as the README says
        x = padded.transpose(2, 0, 1)[None].astype(np.float32) / 255
        ours = session.run(None, {"image": x})[0][0].transpose(1, 2, 0)[:h, :w]
        bgr = derainer.weights_info.channel_order == "BGR"
        engine = derainer._forward(padded[None, ..., ::-1] if bgr else padded[None], 255.0).image[0, :h, :w]
        engine = engine[..., ::-1] if bgr else engine  # the engine's float output, RGB
        image = derainer.clean(rgb)
        d_float = float(np.abs(np.clip(engine, 0, 1) - ours).max() * 255)
        d_u8 = float(np.abs((ours * 255).round() - image.astype(np.float32)).max())
        worst_float, worst_u8 = max(worst_float, d_float), max(worst_u8, d_u8)
        print(f"{file.name:28s} {w}×{h}  float {d_float:.4f}/255  8-bit {d_u8:.0f}/255", flush=True)
    print(f"worst: float {worst_float:.4f}/255, 8-bit {worst_u8:.0f}/255")


if __name__ == "__main__":
    main()
