"""Export of ReL-PSP networks to other formats. ``nir``: the Neuromorphic Intermediate Representation
(each layer as Linear/Conv2d -> I -> IF with the single-spike rule and cut-off in node metadata), with a
reader back into ``relpsp.sim``. The ``nir`` package is imported only when these functions run.

Model (Zhang et al., IEEE TNNLS 2021): ``V_j(t) = sum_i w_ji * max(0, t - t_i)``, one spike at the first
t with ``V_j(t) >= theta``.
"""

from relpsp.export.nir import EXPORTERS, export_nir, network_from_nir, read_nir, to_nir

__all__ = ["EXPORTERS", "export_nir", "network_from_nir", "read_nir", "to_nir"]
