import subprocess
import sys


def test_python_dash_m_derain_runs_the_cli():
    """``python -m derain`` is how a bare machine without the installed script runs it."""
    done = subprocess.run([sys.executable, "-m", "derain", "weights"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "derain-v9" in done.stdout
