"""pdalign: constrained preference alignment with a primal-dual Lagrangian.

The map of the package is ``docs/architecture.md``.
"""

from pdalign import compat

__version__ = "0.2.0"

compat.install()  # the 0.1 module paths (pdalign.losses.DPO in a saved config) still import
