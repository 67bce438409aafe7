"""pdalign: constrained preference alignment with a primal-dual Lagrangian."""

__version__ = "0.1.0"
