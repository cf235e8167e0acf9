"""``derain batch --engine ray``: the batch's per-file step on a Ray Data actor pool.

The same :func:`derain.files.clean_file` that serves ``derain clean`` runs inside actors that
load the model once, so the outputs are the local batch's, byte for byte. Ray Data restarts an
actor that dies and retries its work; every output is written atomically (a temporary file
renamed locally, a single object upload on an object store), so a retry never leaves half a file.
Files are local (or shared) paths, or objects on a pyarrow filesystem (see :mod:`derain.stores`)
that a worker copies in and out around the same step.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .files import clean_file, overlay_path_for
from .imageio import DEFAULT_MAX_PIXELS

INSTALL_HINT = 'the Ray engine needs Ray Data: pip install "derain[ray]"'
MAX_BLOCKS = 10_000
"""Jobs are spread over at most this many Ray Data blocks: one file per block for any usual
folder (the finest retry and progress granularity), bounded for archives of millions of files."""


class SetupFailed(ValueError):
    """The actors could not load the model (weights, device or precision unusable there)."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings both; a bare `ray` lacks Ray Data's deps)
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class Step:
    """How each file is cleaned: :func:`derain.files.clean_file`'s options, as the local batch has them."""

    quality: int = 95
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overlays: bool = False
    keep_metadata: bool = True


@contextmanager
def _local(src: str, outputs: list[str], source_fs: Any, target_fs: Any) -> Iterator[tuple[Path, list[Path]]]:
    """Local paths for one job: a stored input is fetched first, stored outputs uploaded once complete."""
    with tempfile.TemporaryDirectory(prefix="derain-") as tmp:
        local_src = Path(src)
        if source_fs is not None:
            local_src = Path(tmp, "in", PurePosixPath(src).name)
            local_src.parent.mkdir()
            with source_fs.open_input_stream(src) as stream:
                local_src.write_bytes(stream.readall())
        if target_fs is None:
            local_outputs = [Path(out) for out in outputs]
            local_outputs[0].parent.mkdir(parents=True, exist_ok=True)
        else:
            local_outputs = [Path(tmp, "out", PurePosixPath(out).name) for out in outputs]
            local_outputs[0].parent.mkdir()
        yield local_src, local_outputs
        if target_fs is not None:  # an object appears only when its upload completes
            for out, local in zip(outputs, local_outputs):
                with target_fs.open_output_stream(out) as stream:
                    stream.write(local.read_bytes())


class _Worker:
    """A Ray actor: loads the model once, then cleans one file per call."""

    def __init__(self, model: dict[str, Any], step: Step, source_fs: Any, target_fs: Any):
        import ray
        import torch

        from .engine import Derainer

        self.derainer = Derainer(**model)
        if self.derainer.device.type == "cpu":  # the engine takes every visible core; an actor owns only its share
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                torch.set_num_threads(max(1, int(cpus)))
        self.step, self.source_fs, self.target_fs = step, source_fs, target_fs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reasons = [self._clean(str(src), str(dst)) for src, dst in zip(batch["src"], batch["dst"])]
        return {"index": batch["index"], "reason": np.array(reasons, dtype=object)}

    def _clean(self, src: str, dst: str) -> str:
        """Empty when done, else why not, naming the files as the job does (not their temporary copies)."""
        from .cli.common import one_line

        step = self.step
        outputs = [dst, str(overlay_path_for(Path(dst)))] if step.overlays else [dst]
        local_src, local_outputs = Path(src), [Path(out) for out in outputs]
        try:
            with _local(src, outputs, self.source_fs, self.target_fs) as (local_src, local_outputs):
                overlay = local_outputs[1] if step.overlays else None
                clean_file(
                    self.derainer,
                    local_src,
                    local_outputs[0],
                    step.quality,
                    step.max_pixels,
                    overlay,
                    step.keep_metadata,
                )
            return ""
        except Exception as exc:  # one bad file never stops the batch
            reason = one_line(exc).replace(str(local_src), src)
            for out, local in zip(outputs, local_outputs):
                reason = reason.replace(str(local), out)
            return reason


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hold back what native code writes to stderr; replay it if the block fails."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _pool(ray: Any, device: str, workers: int | None, jobs: int) -> tuple[int, dict[str, float]]:
    """Actor count and resources per actor: one GPU each where the cluster has GPUs, else all of a node's CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu" and not device.startswith("mps"):
        count, each = gpus, {"num_gpus": 1}
    else:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        per_node = min(int(n["Resources"]["CPU"]) for n in nodes)
        count, each = len(nodes), {"num_cpus": per_node}
    return max(1, min(count, workers or count, jobs)), each


def run(
    jobs: list[tuple[str, str]],
    source_fs: Any,
    target_fs: Any,
    model: dict[str, Any],
    step: Step = Step(),
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, str | None]]:
    """Clean each ``(src, dst)`` job on Ray; yields ``(job index, failure reason or None)`` as files finish.

    Paths are absolute local (or shared) paths, or paths on ``source_fs``/``target_fs`` (pyarrow
    filesystems) where those are given.
    Joins the cluster at ``address`` (or ``RAY_ADDRESS``), else starts a local Ray instance that
    lives as long as the generator; a Ray already initialised in this process is used as it is.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        # Ray Data's actors always log an object-store caveat that does not apply here (their
        # constructor arguments live as long as the job); only Ray's own failures are worth a line.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        with _quiet_stderr():  # Ray's core announces that level on stderr as it starts
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its failures reach the caller as exceptions
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        count, each = _pool(ray, model.get("device", "auto"), workers, len(jobs))
        items = [{"index": i, "src": src, "dst": dst} for i, (src, dst) in enumerate(jobs)]
        results = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS)).map_batches(
            _Worker,
            fn_constructor_kwargs={
                "model": model,
                "step": step,
                "source_fs": source_fs,
                "target_fs": target_fs,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=count),
            **each,
        )
        try:
            for row in results.iter_rows():
                yield int(row["index"]), row["reason"] or None
        except ray.exceptions.ActorDiedError as exc:  # an actor could not load the model: say why in one line
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise SetupFailed(lines[-1].split(": ", 1)[-1]) from None
    finally:
        if started:
            ray.shutdown()
