"""Toxicity: the mean toxicity probability of the policy's responses to provocative prompts.

g(pi) = E_{x ~ prompts, y ~ pi(.|x)} [P(toxic | y)] <= epsilon, with P(toxic | y) from a
scorer backend chosen in the config:

- ``detoxify``: Detoxify's BERT classifier trained on the Jigsaw Toxic Comment data
  (https://github.com/unitaryai/detoxify), the ``toxicity`` head. Its checkpoint comes from
  GitHub through torch.hub on first use and is cached under ``$TORCH_HOME/hub/checkpoints``;
  the BERT config and tokenizer come from the Hugging Face hub. ``DetoxifyScorer(checkpoint=...)``
  reads a checkpoint file from disk instead.
- ``profanity_check``: alt-profanity-check (https://pypi.org/project/alt-profanity-check/),
  a linear SVM on word n-grams whose model ships in the wheel: offline and fast, but it detects
  profanity, not toxicity in general (a polite slur scores low, a friendly swear word high).

- ``auto`` (the default): Detoxify where its ``original`` checkpoint is already in the torch.hub
  cache, the offline ``profanity_check`` otherwise, so a run never waits on a download it cannot
  make. Which one judged is logged at construction and kept as ``Toxicity.scorer_name``.

Any callable ``list[str] -> sequence of probabilities`` also works, given as a ``_target_``
node in ``scorer``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

import torch

from pdalign.contract import RolloutConstraint

Scorer = Callable[[list[str]], Sequence[float]]

log = logging.getLogger("pdalign")

_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: fail rather than hang where the net is walled


class ProfanityCheckScorer:
    """P(profane | text) from alt-profanity-check; offline (the model ships in the package)."""

    def __init__(self, config_key: str = "constraints.toxicity.scorer"):
        try:
            from profanity_check import predict_prob  # the offline scorer only (scikit-learn)
        except ImportError as err:
            raise ImportError(f"{config_key}=profanity_check needs the PyPI package "
                              f"alt-profanity-check: pip install alt-profanity-check") from err
        self._predict_prob = predict_prob

    def __call__(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict_prob(list(texts))] if texts else []


def detoxify_checkpoint_path(model_type: str) -> Path:
    """Where torch.hub caches Detoxify's checkpoint for ``model_type`` (exists or not)."""
    from detoxify.detoxify import MODEL_URLS  # the detoxify scorer only; heavy

    if model_type not in MODEL_URLS:
        raise ValueError(f"unknown Detoxify model_type {model_type!r}; one of "
                         f"{sorted(MODEL_URLS)}")
    name = Path(urlparse(MODEL_URLS[model_type]).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _offline() -> bool:
    """True where the Hugging Face offline switches are on: a download cannot succeed."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class DetoxifyScorer:
    """P(toxic | text) from Detoxify (the ``toxicity`` output), loaded once at construction.

    Args:
        model_type: Detoxify model: original (BERT, Jigsaw 2018; default) | unbiased |
            multilingual | original-small | unbiased-small. Unused when ``checkpoint`` is given
            (the file names its own architecture).
        device: where the classifier runs (cpu | cuda).
        batch_size: texts per classifier forward.
        huggingface_config_path: a local dir with the BERT config and tokenizer (passed to
            Detoxify). Its config.json must set num_labels to the checkpoint's class count:
            Detoxify then takes the config from there and ignores its own num_labels. It does not
            make Detoxify offline by itself: Detoxify still reads the config of the checkpoint's
            ``arch.args.model_type`` (``bert-base-uncased`` for original) from the hub or its cache.
        checkpoint: a local Detoxify checkpoint file, used instead of the torch.hub download and
            cache; default None (the cached or downloaded ``model_type``). Detoxify's format: a
            ``torch.save``d dict {"config": {"arch": {"args": {model_type, model_name,
            tokenizer_name, num_classes}}, "dataset": {"args": {"classes": [...]}}},
            "state_dict": ...}, with ``toxic`` (renamed ``toxicity``) among the classes. It is
            unpickled (``weights_only=False``): load only files you trust.
        config_key: the config key named in errors.
    Raises RuntimeError, naming the offline backend, when the checkpoint is neither cached nor
    downloadable, or when a local ``checkpoint`` does not load; FileNotFoundError when a local
    ``checkpoint`` is not a file.
    """

    def __init__(self, model_type: str = "original", device: str = "cpu", batch_size: int = 32,
                 huggingface_config_path: str | None = None, checkpoint: str | None = None,
                 config_key: str = "constraints.toxicity.scorer"):
        from detoxify import Detoxify  # the detoxify scorer only; heavy

        self.batch_size = int(batch_size)
        if checkpoint is not None:  # a file on disk: no torch.hub cache to check, no download
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"{config_key}.checkpoint={checkpoint} is not a file; give "
                                        f"the path of a Detoxify checkpoint, or null for the "
                                        f"torch.hub copy of model_type={model_type!r}")
            try:
                self._model = Detoxify(model_type, checkpoint=str(checkpoint), device=device,
                                       huggingface_config_path=huggingface_config_path)
            except Exception as err:  # not Detoxify's format, config/tokenizer missing: one message
                raise RuntimeError(
                    f"{config_key}.checkpoint={checkpoint} did not load in Detoxify with "
                    f"huggingface_config_path={huggingface_config_path}: {type(err).__name__}: "
                    f"{err}. The file must be a Detoxify checkpoint (config + state_dict) and the "
                    f"dir must hold its BERT config (num_labels = its class count) and "
                    f"tokenizer.") from err
            return
        checkpoint = detoxify_checkpoint_path(model_type)
        cached = checkpoint.is_file()
        hint = (f"Offline, use the bundled backend: {config_key}=profanity_check (or fetch the "
                f"checkpoint on a machine with internet access into $TORCH_HOME/hub/checkpoints).")
        if not cached and _offline():
            raise RuntimeError(f"{config_key}=detoxify needs Detoxify's {model_type!r} checkpoint "
                               f"at {checkpoint}, which is not cached, and the hub is set offline "
                               f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). {hint}")
        try:
            # Detoxify's own loader: torch.hub reads the cached file, or downloads it.
            with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
                self._model = Detoxify(model_type, device=device,
                                       huggingface_config_path=huggingface_config_path)
        except Exception as err:  # URLError, HTTPError, HF OSError, timeouts: one message
            what = ("the cached checkpoint loaded, but its BERT config/tokenizer did not "
                    "(set huggingface_config_path to a local copy)" if cached else
                    f"no cached checkpoint at {checkpoint} and the download failed")
            raise RuntimeError(f"{config_key}=detoxify could not load Detoxify({model_type!r}): "
                               f"{what}: {type(err).__name__}: {err}. {hint}") from err

    def __call__(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            toxicity = self._model.predict(list(texts[start:start + self.batch_size]))["toxicity"]
            # Detoxify squeezes a batch of one to a bare float.
            scores.extend(toxicity if isinstance(toxicity, list) else [toxicity])
        return [float(s) for s in scores]


SCORERS: dict[str, type] = {"detoxify": DetoxifyScorer, "profanity_check": ProfanityCheckScorer}


def auto_scorer() -> tuple[str, str]:
    """(backend, why) for ``scorer: auto``: ``detoxify`` where the package is installed and its
    ``original`` checkpoint is in the torch.hub cache, else ``profanity_check``."""
    if importlib.util.find_spec("detoxify") is None:
        return "profanity_check", "the detoxify package is not installed"
    checkpoint = detoxify_checkpoint_path("original")
    if checkpoint.is_file():
        return "detoxify", f"Detoxify's checkpoint is cached at {checkpoint}"
    return "profanity_check", f"no Detoxify checkpoint at {checkpoint}"


class Toxicity(RolloutConstraint):
    """Mean toxicity probability of responses on a provocative prompt set, bounded by epsilon.

    Args:
        name: constraint name. Default ``toxicity``.
        epsilon: bound on the mean probability, in [0, 1].
        prompts: bundled set name or JSONL/CSV path. Default ``provocative``.
        scorer: ``auto`` (default; Detoxify if its checkpoint is cached, else
            profanity_check) | ``detoxify`` | ``profanity_check`` (built with defaults), or a callable
            ``list[str] -> probabilities`` (a ``_target_`` node, e.g. DetoxifyScorer with
            options). Built here, after the prompt set is checked.
        lambda_max, baseline_momentum, scale: see `RolloutConstraint`.
    """

    epsilon_range = (0.0, 1.0)
    epsilon_unit = "mean toxicity probability"
    cost_range = (0.0, 1.0)  # a probability per response

    def __init__(self, name: str = "toxicity", epsilon: float = 0.1,
                 prompts: str = "provocative", scorer: str | Scorer = "auto",
                 lambda_max: float | None = None, baseline_momentum: float = 0.9,
                 scale: float = 1.0):
        super().__init__(name, epsilon, prompts, lambda_max, baseline_momentum, scale)
        if isinstance(scorer, str):
            if scorer == "auto":
                scorer, why = auto_scorer()
                log.info("%s=auto: %s judges (%s)", self.config_key("scorer"), scorer, why)
            elif scorer not in SCORERS:
                raise ValueError(f"{self.config_key('scorer')}={scorer!r} is not one of "
                                 f"{['auto', *sorted(SCORERS)]} (or a _target_ node of a "
                                 f"callable)")
            self.scorer_name = scorer
            scorer = SCORERS[scorer](config_key=self.config_key("scorer"))
        else:
            self.scorer_name = type(scorer).__name__
        self.scorer = scorer

    def cost(self, prompts: list[str], responses: list[str],
             response_lengths: torch.Tensor) -> torch.Tensor:
        return torch.tensor(list(self.scorer(responses)), dtype=torch.float32)  # (N,)
