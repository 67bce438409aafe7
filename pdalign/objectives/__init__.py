"""Preference objectives: pure per-example losses (`losses`) and the objectives a config names
with ``_target_`` (``pdalign.objectives.DPO``, ...), re-exported here for those names."""

from pdalign.objectives.kto import KTO
from pdalign.objectives.preference import DPO, ORPO, SimPO

__all__ = ["DPO", "KTO", "ORPO", "SimPO"]
