"""`derain batch --engine ray` on a local Ray instance (2 CPUs) and a local S3 server (moto).

Every Ray run is compared with the local engine on the same folder: the same files, byte for byte,
and the same summary. Select these tests with ``-m ray``; they skip only where Ray cannot be installed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from .conftest import random_image
from .test_cli import _truncated_png, assert_fails, assert_no_temp_files, digest, files_under, photo, run, write
from .test_imageio import _jpeg_with_exif

KILL_ON = "DERAIN_TEST_KILL_ON"
"""Names a file; while it exists, the Ray worker that has just made the output of the file it
names (complete, not yet in place) kills itself."""


def _die_when_told() -> None:
    """Ray worker setup hook: SIGKILL this worker mid-job at the file that the kill file names (once)."""
    import derain.distributed

    order = Path(os.environ[KILL_ON])
    clean_file = derain.distributed.clean_file

    def clean_and_die(derainer, src: Path, *args, **kwargs):
        clean_file(derainer, src, *args, **kwargs)
        if order.exists() and Path(src).name == order.read_text():
            try:
                order.unlink()  # only one worker wins
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    derain.distributed.clean_file = clean_and_die


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local S3 server and a local Ray with 2 CPUs for the whole module; yields the kill file's path."""
    ray = pytest.importorskip("ray", reason='Ray is not installed here (pip install "derain[ray]")')
    pytest.importorskip("ray.data", reason='Ray Data is not installed here (pip install "derain[ray]")')
    server_module = pytest.importorskip("moto.server", reason='moto is not installed here (pip install "derain[test]")')
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    kill_file = tmp_path_factory.mktemp("ray") / "kill-on"
    with pytest.MonkeyPatch.context() as env:  # before Ray starts, so that its workers see it too
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        env.setenv(KILL_ON, str(kill_file))
        env.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
        env.delenv("RAY_ADDRESS", raising=False)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"worker_process_setup_hook": f"{__name__}._die_when_told"},
        )
        try:
            yield kill_file
        finally:
            ray.shutdown()
            server.stop()


@pytest.fixture
def model(tiny_weights: Path) -> list[str]:
    return ["--weights", str(tiny_weights), "--device", "cpu"]


def _folder(root: Path) -> set[str]:
    """Nested sub-folders, mixed formats and depths, two broken files; returns the inputs that work."""
    rng = np.random.default_rng(3)
    photo(root / "a" / "1.png", rng)
    write(root / "a" / "b" / "2.jpg", random_image(rng, 24, 32))
    photo(root / "a" / "b" / "c" / "3.PNG", rng, 20, 28)
    photo(root / "deep" / "16bit.png", rng, dtype=np.uint16)
    alpha = np.concatenate([random_image(rng, 24, 32), rng.integers(0, 256, (24, 32, 1), dtype=np.uint8)], axis=2)
    write(root / "deep" / "alpha.tif", alpha)
    write(root / "deep" / "w.webp", random_image(rng, 24, 32))
    (root / "turned.jpg").write_bytes(_jpeg_with_exif(random_image(rng, 24, 32), orientation=6))
    _truncated_png(root / "a" / "b" / "broken.png")
    (root / "deep" / "text.jpg").write_text("not a photo at all")
    (root / "a" / "notes.txt").write_text("not an image name")
    photo(root / "a" / ".hidden.png", rng)
    return {"a/1.png", "a/b/2.jpg", "a/b/c/3.PNG", "deep/16bit.png", "deep/alpha.tif", "deep/w.webp", "turned.jpg"}


def _summary(result: Result, root: Path | None = None) -> list[str]:
    """The summary lines, with ``root`` shown as ROOT (progress bars and Ray's retry notices differ by run)."""
    lines = [line for line in result.output.splitlines() if " done, " in line or line.startswith("  ✗")]
    return [line.replace(str(root), "ROOT") for line in lines] if root else lines


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> tuple[Path, Result]:
    """The local engine's run on the test folder: the reference for every Ray run."""
    root = tmp_path_factory.mktemp("local")
    _folder(root / "in")
    result = run("batch", root / "in", "-o", root / "out", "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 1 and "7 done, 0 skipped, 2 failed" in result.output, result.output
    return root, result


@pytest.mark.ray
def test_same_files_and_summary_as_the_local_engine_and_resumes(
    cluster: Path, local: tuple[Path, Result], tmp_path: Path, model: list[str]
) -> None:
    names = _folder(tmp_path / "in")
    out = tmp_path / "out"
    result = run("batch", tmp_path / "in", "-o", out, "--engine", "ray", *model)
    assert result.exit_code == 1, result.output
    assert _summary(result, tmp_path) == _summary(local[1], local[0])
    assert files_under(out) == names
    assert digest(out) == digest(local[0] / "out")
    assert_no_temp_files(out)
    (out / "deep" / "alpha.tif").unlink()  # as if the run had stopped before it
    result = run("batch", tmp_path / "in", "-o", out, "--engine", "ray", *model)
    assert result.exit_code == 1, result.output
    assert "1 done, 6 skipped, 2 failed" in result.output
    assert "broken.png" in result.output and "text.jpg" in result.output
    assert digest(out) == digest(local[0] / "out")


@pytest.mark.ray
def test_a_killed_worker_loses_nothing(
    cluster: Path, local: tuple[Path, Result], tmp_path: Path, model: list[str]
) -> None:
    _folder(tmp_path / "in")
    cluster.write_text("2.jpg")  # the worker dies with SIGKILL once it has made a/b/2.jpg's output
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--engine", "ray", *model)
    assert not cluster.exists(), "no worker was killed"
    assert result.exit_code == 1, result.output
    assert _summary(result, tmp_path) == _summary(local[1], local[0])
    assert digest(tmp_path / "out") == digest(local[0] / "out")
    assert_no_temp_files(tmp_path / "out")  # nor the scratch folder the killed job wrote in


@pytest.mark.ray
def test_each_video_is_one_task_mirrored(cluster: Path, tmp_path: Path, model: list[str], tiny_weights: Path) -> None:
    pytest.importorskip("av", reason='PyAV is not installed here (pip install "derain[video]")')
    from derain.engine import Derainer
    from derain.video import clean_video

    from .test_video import audio_payload, make_clip, video_frames

    for day in ("day1", "day2"):
        (tmp_path / "in" / day).mkdir(parents=True)
    drive = make_clip(tmp_path / "in" / "day1" / "drive.mp4")
    robot = make_clip(tmp_path / "in" / "day2" / "robot.ts", frames=4, audio=False)
    (tmp_path / "in" / "day2" / "broken.mov").write_text("not a video")
    photo(tmp_path / "in" / "day2" / "still.png", np.random.default_rng(0))
    out = tmp_path / "out"
    result = run("batch", tmp_path / "in", "-o", out, "--engine", "ray", *model)
    assert result.exit_code == 1, result.output
    assert "3 done, 0 skipped, 1 failed" in result.output
    assert f"{tmp_path / 'in' / 'day2' / 'broken.mov'}: not a video FFmpeg can read" in result.output
    assert files_under(out) == {"day1/drive.mp4", "day2/robot.mkv", "day2/still.png"}  # as `derain video` names them
    assert video_frames(out / "day1" / "drive.mp4") == video_frames(drive)
    assert audio_payload(out / "day1" / "drive.mp4") == audio_payload(drive)
    assert len(video_frames(out / "day2" / "robot.mkv")) == len(video_frames(robot))
    derainer = Derainer(tiny_weights, device="cpu")  # the same clip as `derain video` makes
    clean_video(derainer, drive, tmp_path / "alone.mp4")
    assert (tmp_path / "alone.mp4").read_bytes() == (out / "day1" / "drive.mp4").read_bytes()
    assert_no_temp_files(out)
    result = run("batch", tmp_path / "in", "-o", out, "--engine", "ray", *model)
    assert "0 done, 3 skipped, 1 failed" in result.output  # a rerun resumes: done clips are not redone


@pytest.mark.ray
@pytest.mark.parametrize(
    ("options", "reason", "before_any_actor"),
    [
        (["--device", "cuda"], "CUDA was requested but the Ray cluster has no GPUs (try --device cpu)", True),
        (["--device", "cpu", "--precision", "fp16"], "fp16 is not supported on the CPU", False),
    ],
)
def test_a_model_the_cluster_cannot_run_is_one_line(
    cluster: Path, tmp_path: Path, tiny_weights: Path, options: list[str], reason: str, before_any_actor: bool
) -> None:
    photo(tmp_path / "in" / "1.png", np.random.default_rng(0))
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--engine", "ray", "-w", tiny_weights, *options)
    assert_fails(result, 2, reason, one_line=before_any_actor)  # else the progress bar has started
    assert files_under(tmp_path / "out") == set()


@pytest.mark.ray
def test_object_store_folders(cluster: Path, local: tuple[Path, Result], tmp_path: Path, model: list[str]) -> None:
    import pyarrow.fs

    names = _folder(tmp_path / "in")
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")  # keys from the environment
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    s3.create_dir("photos")
    pyarrow.fs.copy_files(str(tmp_path / "in"), "photos/in", pyarrow.fs.LocalFileSystem(), s3)
    result = run("batch", "s3://photos/in", "-o", "s3://photos/out/", "--engine", "ray", *model)
    assert result.exit_code == 1, result.output
    assert "7 done, 0 skipped, 2 failed" in result.output
    assert "s3://photos/in/a/b/broken.png: not a readable image" in result.output
    pyarrow.fs.copy_files("photos/out", str(tmp_path / "out"), s3, pyarrow.fs.LocalFileSystem())
    assert digest(tmp_path / "out") == digest(local[0] / "out")
    assert files_under(tmp_path / "out") == names
    s3.delete_file("photos/out/a/1.png")  # the store's listing finds the outputs that exist: a rerun resumes
    result = run("batch", "s3://photos/in", "-o", "s3://photos/out", "--engine", "ray", *model)
    assert "1 done, 6 skipped, 2 failed" in result.output
    assert s3.get_file_info("photos/out/a/1.png").size == (local[0] / "out" / "a" / "1.png").stat().st_size


def test_object_store_folders_need_the_ray_engine(tmp_path: Path, model: list[str]) -> None:
    assert_fails(run("batch", "s3://photos/in", *model), 2, "need --engine ray")


def test_without_ray_a_one_line_hint(tmp_path: Path, model: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    photo(tmp_path / "in" / "1.png", np.random.default_rng(0))
    assert_fails(run("batch", tmp_path / "in", "--engine", "ray", *model), 2, 'pip install "derain[ray]"')
    assert not (tmp_path / "in_derained").exists()


def test_an_address_where_nothing_listens_is_one_line(
    tmp_path: Path, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray itself would retry such an address for minutes, deaf to Ctrl-C."""
    ray = pytest.importorskip("ray", reason='Ray is not installed here (pip install "derain[ray]")')
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `derain batch`
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("Ray was asked to join"))
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photo(tmp_path / "in" / "1.png", np.random.default_rng(0))
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        result = run("batch", tmp_path / "in", "--engine", "ray", "--ray-address", address, *model)
        assert_fails(result, 2, f"cannot join the Ray cluster at {address}", "ray start --head")
    assert files_under(tmp_path / "in_derained") == set()


class _Cluster:
    """What the actor pool reads of a Ray cluster: its total resources and its nodes (one dead)."""

    def __init__(self, gpus: int, cpus_per_node: list[int]) -> None:
        self.gpus, self.cpus_per_node = gpus, cpus_per_node

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(sum(self.cpus_per_node))} | ({"GPU": float(self.gpus)} if self.gpus else {})

    def nodes(self) -> list[dict]:
        alive = [{"Alive": True, "Resources": {"CPU": float(c)}} for c in self.cpus_per_node]
        return alive + [{"Alive": False, "Resources": {"CPU": 96.0}}]


def test_actors_take_one_gpu_each_where_the_cluster_has_gpus() -> None:
    """No GPU here to run it on, so the pool's choice is checked on a stand-in for the cluster."""
    from derain.distributed import SetupFailed, _pool

    gpus = _Cluster(gpus=8, cpus_per_node=[32, 32])
    assert _pool(gpus, "auto", None, 100) == (8, {"num_gpus": 1})
    assert _pool(gpus, "cuda", 3, 100) == (3, {"num_gpus": 1}), "--workers caps the pool"
    assert _pool(gpus, "auto", None, 2) == (2, {"num_gpus": 1}), "never more actors than files"
    assert _pool(gpus, "cpu", None, 100) == (2, {"num_cpus": 32}), "--device cpu: one actor per live node"
    cpus = _Cluster(gpus=0, cpus_per_node=[16, 8])
    assert _pool(cpus, "auto", None, 100) == (2, {"num_cpus": 8})
    with pytest.raises(SetupFailed, match="no GPUs"):
        _pool(cpus, "cuda", None, 100)
