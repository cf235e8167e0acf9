"""``derain batch --engine ray``: the batch's per-file step on a Ray Data actor pool.

The same :func:`derain.files.clean_file` that serves ``derain clean`` runs inside actors that
load the model once, so the outputs are the local batch's, byte for byte; a video file is one
job for :func:`derain.video.clean_video`. Ray Data restarts an actor that dies and retries its
work. A job's outputs are made in a scratch folder and published only once complete (renamed
into place, or uploaded as one object to an object store); the scratch folder of a local output
tree is removed when the run ends, so a worker killed mid-file leaves nothing behind.
Files are local (or shared) paths, or objects on a pyarrow filesystem (see :mod:`derain.stores`)
that a worker copies in and out around the same step.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .files import clean_file, overlay_path_for, refuse_overwriting_input
from .imageio import DEFAULT_MAX_PIXELS
from .stores import Store
from .video import clean_video, is_video_path

INSTALL_HINT = 'the Ray engine needs Ray Data: pip install "derain[ray]"'
AUTH_HINT = (
    "the cluster asks for its token: set RAY_AUTH_MODE=token, and off the head node also "
    "RAY_AUTH_TOKEN to what `ray get-auth-token` prints there"
)
CONNECT_SECONDS = 10.0
"""How long a cluster's address has to answer before Ray is asked to join it: where nothing
listens, Ray retries for minutes and will not stop for Ctrl-C."""
START_HINT = "start one with `ray start --head`, or give its address with --ray-address"
MAX_BLOCKS = 10_000
"""Jobs are spread over at most this many Ray Data blocks: one file per block for any usual
folder (the finest retry and progress granularity), bounded for archives of millions of files."""


class SetupFailed(ValueError):
    """Ray cannot do the job: no cluster to join, no GPU for a CUDA run, a model the actors cannot load."""


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
def _staged(
    src: str, outputs: list[str], source_fs: Any, target_fs: Any, scratch: str | None
) -> Iterator[tuple[Path, list[Path]]]:
    """Local paths for one job: a stored input is fetched first; the outputs are made in a scratch
    folder and published (renamed into place, or uploaded) only once the step has made them all."""
    with tempfile.TemporaryDirectory(prefix="job-", dir=scratch) as tmp:
        local_src = Path(src)
        if source_fs is not None:
            local_src = Path(tmp, "in", PurePosixPath(src).name)
            local_src.parent.mkdir()
            with source_fs.open_input_stream(src) as stream:
                local_src.write_bytes(stream.readall())
        local_outputs = [Path(tmp, "out", PurePosixPath(out).name) for out in outputs]
        local_outputs[0].parent.mkdir()
        yield local_src, local_outputs
        for out, local in zip(outputs, local_outputs):
            if target_fs is None:
                refuse_overwriting_input(local_src, Path(out))
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                os.replace(local, out)  # the scratch folder is on the output tree's filesystem
            else:  # an object appears only when its upload completes
                with target_fs.open_output_stream(out) as stream:
                    stream.write(local.read_bytes())


class _Worker:
    """A Ray actor: loads the model once, then cleans one file per call.

    A model that cannot load here is reported with every job rather than raised: an actor whose
    constructor fails is retried by Ray at length, with its traceback printed each time.
    """

    def __init__(self, model: dict[str, Any], step: Step, source_fs: Any, target_fs: Any, scratch: str | None):
        import ray
        import torch

        from .cli.common import one_line
        from .engine import Derainer

        self.step, self.source_fs, self.target_fs, self.scratch = step, source_fs, target_fs, scratch
        self.unusable = ""
        try:
            self.derainer = Derainer(**model)
        except Exception as exc:
            self.unusable = one_line(exc)
            return
        if self.derainer.device.type == "cpu":  # the engine takes every visible core; an actor owns only its share
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                torch.set_num_threads(max(1, int(cpus)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.unusable:
            reasons = [self.unusable] * len(batch["index"])
        else:
            reasons = [self._clean(str(src), str(dst)) for src, dst in zip(batch["src"], batch["dst"])]
        unusable = np.full(len(reasons), bool(self.unusable))
        return {"index": batch["index"], "reason": np.array(reasons, dtype=object), "unusable": unusable}

    def _clean(self, src: str, dst: str) -> str:
        """Empty when done, else why not, naming the files as the job does (not their temporary copies)."""
        from .cli.common import one_line

        step = self.step
        video = is_video_path(Path(src))
        outputs = [dst, str(overlay_path_for(Path(dst)))] if step.overlays and not video else [dst]
        local_src, local_outputs = Path(src), [Path(out) for out in outputs]
        try:
            with _staged(src, outputs, self.source_fs, self.target_fs, self.scratch) as (local_src, local_outputs):
                if video:
                    clean_video(self.derainer, local_src, local_outputs[0])
                else:
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
def _held_stderr() -> Iterator[Any]:
    """Hold back what native code writes to stderr; yields the file that holds it."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    # Ray Data's actors always log an object-store caveat that does not apply here (their
    # constructor arguments live as long as the job); only Ray's own failures are worth a line.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    where = address or os.environ.get("RAY_ADDRESS")
    if where:
        _check_answers(where)
    with _held_stderr() as held:  # Ray's core announces that level, and retries to connect, on stderr
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            from .cli.common import one_line

            held.seek(0)
            reason = f"cannot join the Ray cluster at {where}: {one_line(exc)}" if where else one_line(exc)
            if where == "auto" and "running Ray instance" in str(exc):  # Ray's text names its own flag, not ours
                reason = f"no Ray cluster runs on this machine: {START_HINT}"
            if b"InvalidAuthToken" in held.read():
                reason += f" ({AUTH_HINT})"
            raise SetupFailed(reason) from None
    return True


def _check_answers(address: str) -> None:
    """Raise :class:`SetupFailed` unless something listens at ``address`` (``host:port`` or
    ``ray://host:port``; ``auto`` and ``local`` are Ray's to find)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or "no answer"
        raise SetupFailed(f"cannot join the Ray cluster at {address}: {reason} there; {START_HINT}") from None


def _pool(ray: Any, device: str, workers: int | None, jobs: int) -> tuple[int, dict[str, float]]:
    """Actor count and resources per actor: one GPU each where the cluster has GPUs, else all of a node's CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device.startswith("cuda") and not gpus:
        raise SetupFailed("CUDA was requested but the Ray cluster has no GPUs (try --device cpu)")
    if gpus and device != "cpu" and not device.startswith("mps"):
        count, each = gpus, {"num_gpus": 1}
    else:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        per_node = min(int(n["Resources"]["CPU"]) for n in nodes)
        count, each = len(nodes), {"num_cpus": per_node}
    return max(1, min(count, workers or count, jobs)), each


def run(
    jobs: list[tuple[str, str]],
    source: Store,
    target: Store,
    model: dict[str, Any],
    step: Step = Step(),
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, str | None]]:
    """Clean each ``(src, dst)`` job on Ray; yields ``(job index, failure reason or None)`` as files finish.

    Paths are absolute local (or shared) paths, or paths on ``source.fs``/``target.fs`` for
    object stores. Joins the cluster at ``address`` (or ``RAY_ADDRESS``), else starts a local Ray
    instance that lives as long as the returned iterator; a Ray already initialised in this
    process is used as it is. Raises :class:`SetupFailed` before any file is done where Ray cannot
    start or join, or a CUDA run finds no GPU; the iterator raises it where the model cannot load.
    """
    ray = require_ray()
    started = _connect(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its failures reach the caller as exceptions
        count, each = _pool(ray, model.get("device", "auto"), workers, len(jobs))
        scratch = None
        if not target.remote:  # beside the outputs, so that publishing one is a rename
            scratch = target.native(target.root / f".derain-partial-{secrets.token_hex(4)}")
            Path(scratch).mkdir(parents=True)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    items = [{"index": i, "src": src, "dst": dst} for i, (src, dst) in enumerate(jobs)]
    results = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS)).map_batches(
        _Worker,
        fn_constructor_kwargs={
            "model": model,
            "step": step,
            "source_fs": source.fs,
            "target_fs": target.fs,
            "scratch": scratch,
        },
        batch_size=1,
        # Ray Data otherwise calls the UDF on a helper thread, where glibc gives the model's
        # buffers to a thread arena that returns them to the OS after each image: every image
        # then page-faults about 1.5 GB back in (0.7 s of system time on a 720x480 photo). Called
        # on the actor's main thread (one call at a time, as before), they stay in the main arena.
        compute=ray.data.ActorPoolStrategy(size=count, enable_true_multi_threading=True),
        **each,
    )
    return _results(ray, results, started, scratch)


def _results(ray: Any, results: Any, started: bool, scratch: str | None) -> Iterator[tuple[int, str | None]]:
    """The rows of the job as they come; on the way out (done, failed or closed early) the job
    stops, the scratch folder goes and a Ray started for the job shuts down."""
    try:
        for row in results.iter_rows():
            if row["unusable"]:
                raise SetupFailed(row["reason"])
            yield int(row["index"]), row["reason"] or None
    finally:
        if started:
            ray.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
