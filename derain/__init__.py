"""derain: remove raindrops on the window or lens from photos (Attentive GAN, Qian et al. 2018)."""

import os

# OpenCV reads its own pixel limit (2**30) once, when it first loads; --max-pixels is the real
# guard, so lift OpenCV's before any derain module imports it.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**40))
# A truncated file is reported in one line of our own; OpenCV's warnings would add a second, raw one
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from .engine import Derainer, Restoration  # noqa: E402
from .weights import WeightsError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Derainer", "Restoration", "WeightsError", "__version__"]
