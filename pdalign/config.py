"""Schema checks on a composed config: a typo in a key is one clear error before anything runs.

Hydra's struct mode already rejects an unknown key given on the command line. A key misspelt
inside a YAML file (an experiment, a user's own group option) merges silently, though, so
`check_config` compares each group's keys with the union of the keys its shipped options
define under ``conf/<group>/`` and names the offending key, its group and the known keys.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CHECKED_GROUPS = ("model", "data", "peft", "method", "dual", "train", "eval", "logging")


def _paths(node, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if isinstance(value, dict) and value:
            keys |= _paths(value, f"{path}.")
    return keys


@lru_cache(maxsize=None)
def known_keys(group: str) -> frozenset[str]:
    """Dotted key paths any shipped ``conf/<group>/*.yaml`` defines (defaults lists excluded)."""
    keys: set[str] = set()
    for path in (CONF_DIR / group).glob("*.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        node.pop("defaults", None)
        keys |= _paths(node)
    return frozenset(keys)


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key no shipped option of its group knows."""
    for group in CHECKED_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        known = known_keys(group)
        if not known:
            continue
        container = OmegaConf.to_container(node, resolve=False)
        for key in sorted(_paths(container)):
            root = key.split(".")[0]
            if key in known or ("." in key and root in known and _free_form(group, root)):
                continue
            guess = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {group}.{guess[0]}?" if guess else ""
            raise ValueError(f"{group}.{key} is not a known key of the {group} config group "
                             f"(conf/{group}/*.yaml).{hint} Remove or rename it.")


def _free_form(group: str, root: str) -> bool:
    """Mappings whose keys are user data, not schema (tiny model shape, column maps, sets)."""
    return (group, root) in {("model", "tiny"), ("data", "columns"), ("eval", "sets")}
