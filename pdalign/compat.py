"""The module paths of pdalign 0.1 (one flat package), kept for one release.

A saved run's ``config.yaml`` names its objective ``_target_: pdalign.losses.DPO``, and a plugin
written for 0.1 imports ``pdalign.constraint``. Each old path still imports, as a module that
hands every name on from the modules it was split into, with one DeprecationWarning naming them;
0.3 drops this table. ``pdalign.data`` and ``pdalign.iterative`` are packages now, under their old
names: their config names (``pdalign.iterative.PairAnswers``, ...) are unchanged.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module -> the modules its names live in now, searched in this order
MOVED: dict[str, tuple[str, ...]] = {
    "pdalign.atomic": ("pdalign.runfiles.atomic",),
    "pdalign.battery": ("pdalign.cli.battery",),
    "pdalign.bounds": ("pdalign.evaluation.bounds",),
    "pdalign.build": ("pdalign.training.build",),
    "pdalign.certificate": ("pdalign.evaluation.certificate", "pdalign.runfiles.metrics"),
    "pdalign.checkpoint": ("pdalign.training.checkpoint",),
    "pdalign.cli": ("pdalign.cli.common",),
    "pdalign.config": ("pdalign.training.config",),
    "pdalign.constraint": ("pdalign.contract",),
    "pdalign.dual": ("pdalign.training.dual",),
    "pdalign.eval_cli": ("pdalign.cli.eval",),
    "pdalign.evaluate": ("pdalign.evaluation.heldout",),
    "pdalign.export": ("pdalign.cli.export",),
    "pdalign.generate": ("pdalign.cli.generate",),
    "pdalign.logging": ("pdalign.runfiles.metrics",),
    "pdalign.logprobs": ("pdalign.policy.logprobs", "pdalign.policy.reference"),
    "pdalign.losses": ("pdalign.objectives", "pdalign.objectives.losses", "pdalign.objectives.kto"),
    "pdalign.manifest": ("pdalign.training.manifest",),
    "pdalign.models": ("pdalign.policy.models", "pdalign.policy.precision"),
    "pdalign.report": ("pdalign.reporting.sweep", "pdalign.reporting.runs",
                       "pdalign.reporting.stats", "pdalign.reporting.render",
                       "pdalign.reporting.plots", "pdalign.cli.report"),
    "pdalign.rollout": ("pdalign.contract.manager", "pdalign.policy.sampling",
                        "pdalign.runfiles.metrics"),
    "pdalign.train": ("pdalign.cli.train",),
    "pdalign.trainer": ("pdalign.training.trainer",),
}


class MovedModule(types.ModuleType):
    """An old module path: each attribute is looked up in the new modules, in order."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{self.__name__}.{name}: not found where {self.__name__} moved "
                             f"({', '.join(MOVED[self.__name__])})")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers only the old paths, after every real finder has said no."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return MovedModule(spec.name)

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} moved to {' / '.join(MOVED[module.__name__])} in "
                      f"pdalign 0.2 and the old path goes in 0.3: update the import, or the "
                      f"_target_ of a config", DeprecationWarning, stacklevel=2)


def install() -> None:
    """Put the old paths' finder on ``sys.meta_path`` (once; ``import pdalign`` does it)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
