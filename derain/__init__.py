"""derain: remove raindrops on the window or lens from photos (Attentive GAN, Qian et al. 2018)."""

from .engine import Derainer, Restoration
from .weights import WeightsError

__version__ = "0.1.0"
__all__ = ["Derainer", "Restoration", "WeightsError", "__version__"]
