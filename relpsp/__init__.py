"""relpsp: deep spiking neural networks with temporal coding, exact ReL-PSP neurons and STDBP.

After Zhang et al., "Rectified Linear Postsynaptic Potential Function for Backpropagation in Deep
Spiking Neural Networks", IEEE TNNLS 33(5), 2021 (arXiv:2003.11837). Importing needs only torch and
numpy; compiled kernels (numba), plots, NIR and progress bars are optional extras loaded on use.
"""

from relpsp import functional, nn
from relpsp.models import build_model

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "functional", "nn"]
