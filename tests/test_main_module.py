import subprocess
import sys

from derain.weights import read_manifest


def test_python_dash_m_derain_runs_the_cli():
    """``python -m derain`` is how a bare machine without the installed script runs it."""
    done = subprocess.run([sys.executable, "-m", "derain", "weights"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_manifest()["default"] in done.stdout
