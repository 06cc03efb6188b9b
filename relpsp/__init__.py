"""relpsp: deep spiking neural networks with temporal coding, exact ReL-PSP neurons and STDBP.

After Zhang et al., "Rectified Linear Postsynaptic Potential Function for Backpropagation in Deep
Spiking Neural Networks", IEEE TNNLS 33(5), 2021 (arXiv:2003.11837). Importing needs only torch and
numpy; compiled kernels (numba), plots, NIR and progress bars are optional extras loaded on use.
"""

import os

# torch and numba each run an OpenMP pool. Busy-waiting workers of one pool (or any other load on the
# cores) turned each kernel launch into a scheduler time slice: 15 ms instead of microseconds on 2 cores.
# Sleeping workers avoid it. This only takes effect when relpsp is imported before torch (the CLI does);
# set OMP_WAIT_POLICY yourself to choose otherwise. See docs/PERFORMANCE.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from relpsp import functional, nn
from relpsp.models import build_model

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "functional", "nn"]
