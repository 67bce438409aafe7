"""The real Detoxify code path, offline: a tiny seeded BERT saved in Detoxify's checkpoint format.

Detoxify's released checkpoints come from GitHub through torch.hub, which no test may reach, so
the fixture builds one locally: a 2-layer BERT (hidden 32, a 100-token character vocab) with
its config and tokenizer in a dir (``huggingface_config_path``) and a ``torch.save``d dict in
the layout ``detoxify.detoxify.load_checkpoint`` reads. Everything else (Detoxify's loader, its
tokenization, padding, sigmoid and squeeze) is Detoxify's own code.
"""

from __future__ import annotations

import string
from types import SimpleNamespace

import pytest
import torch

from pdalign.constraints.toxicity import DetoxifyScorer, Toxicity
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.build import build_constraints
from pdalign.training.trainer import train
from tests.conftest import FP32, compose, tiny_overrides

# "toxic" is not the first class, so a test picking column 0 instead of the named one fails;
# Detoxify renames toxic -> toxicity, severe_toxic -> severe_toxicity when it loads.
CLASSES = ["severe_toxic", "toxic", "insult"]
TEXTS = ["You are a stupid idiot, shut up!", "Thank you, have a lovely day.", "no", "ok 42"]


@pytest.fixture(scope="module")
def tiny_detoxify(tmp_path_factory):
    """A tiny seeded BERT classifier, written as Detoxify's checkpoint + config/tokenizer dir.

    Returns ``checkpoint`` and ``hf_dir`` (paths), ``override`` (the Hydra override that points
    ``constraints.toxicity.scorer`` at them) and ``by_hand(texts)``: P(toxic) from the in-memory
    model that made the weights, with its own tokenizer, one padded batch, sigmoid of the
    ``toxic`` logit.
    """
    import transformers

    root = tmp_path_factory.mktemp("detoxify")
    hf_dir = root / "hf"
    hf_dir.mkdir()
    # Characters and ##-continuations: every text tokenizes without [UNK], so texts differ.
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase)
             + [f"##{c}" for c in string.ascii_lowercase] + list(string.digits)
             + list(string.punctuation))
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(hf_dir / "vocab.txt"))
    tokenizer.save_pretrained(hf_dir)
    # num_labels must be in this config.json: given huggingface_config_path, Detoxify builds
    # the model from it and drops the num_labels it computed from the checkpoint.
    # initializer_range 0.5 (not 0.02) spreads the probabilities over (0, 1) instead of ~0.5.
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64, num_labels=len(CLASSES),
                                     initializer_range=0.5)
    config.save_pretrained(hf_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config).eval()
    checkpoint = root / "tiny_detoxify.ckpt"
    # arch.args are get_model_and_tokenizer's kwargs. Its model_type is read with
    # BertConfig.from_pretrained even when huggingface_config_path is given, so it is the local
    # dir here: the released checkpoints say bert-base-uncased, which needs the hub or its cache.
    torch.save({"config": {"arch": {"args": {"model_type": str(hf_dir),
                                             "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer",
                                             "num_classes": len(CLASSES)}},
                           "dataset": {"args": {"classes": CLASSES}}},
                "state_dict": model.state_dict()}, checkpoint)

    @torch.no_grad()
    def by_hand(texts: list[str], column: int = CLASSES.index("toxic")) -> list[float]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        logits = model(**batch).logits  # (B, len(CLASSES))
        return torch.sigmoid(logits[:, column]).tolist()

    override = ("constraints.toxicity.scorer={_target_:pdalign.constraints.toxicity.DetoxifyScorer,"
                f"checkpoint:'{checkpoint}',huggingface_config_path:'{hf_dir}'}}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # any hub access fails rather than downloads
        yield SimpleNamespace(checkpoint=checkpoint, hf_dir=hf_dir, override=override,
                              by_hand=by_hand)


@pytest.fixture
def no_torch_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache and no download: a local checkpoint must need neither."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("torch.hub download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)


@pytest.mark.parametrize("batch_size", [32, 3], ids=["one_batch", "batches_3_1"])
def test_detoxify_scorer_on_a_local_checkpoint_equals_the_bert_by_hand(tiny_detoxify,
                                                                      no_torch_hub, batch_size):
    """P(toxic) = sigmoid(toxic logit) of the same weights run directly in transformers, per
    forward batch: with batch_size 3 the 4 texts go as [3, 1], and the batch of one is the one
    Detoxify squeezes to a bare float."""
    scorer = DetoxifyScorer(checkpoint=str(tiny_detoxify.checkpoint), batch_size=batch_size,
                            huggingface_config_path=str(tiny_detoxify.hf_dir))
    got = scorer(TEXTS)
    by_hand = tiny_detoxify.by_hand
    want = by_hand(TEXTS) if batch_size >= len(TEXTS) else by_hand(TEXTS[:3]) + by_hand(TEXTS[3:])
    assert len(got) == len(TEXTS) and all(0.0 <= p <= 1.0 for p in got)
    assert got == pytest.approx(want, abs=1e-6)
    assert scorer(TEXTS[1:2]) == pytest.approx(by_hand(TEXTS[1:2]), abs=1e-6)
    assert scorer([]) == []
    # the check can tell columns and texts apart: another head, or one score for all, fails it
    assert got != pytest.approx(by_hand(TEXTS, column=CLASSES.index("insult")), abs=1e-3)
    assert max(got) - min(got) > 0.05, got


def test_toxicity_built_from_config_scores_with_the_local_detoxify(tiny_detoxify, no_torch_hub):
    """The shipped YAML with scorer = a DetoxifyScorer _target_ node, through the one builder
    (hydra instantiate, recursive: the scorer node is built before Toxicity)."""
    cfg = compose(["method=primal_dual", "constraints=[toxicity]", tiny_detoxify.override])
    (tox,) = build_constraints(cfg)
    assert isinstance(tox, Toxicity) and isinstance(tox.scorer, DetoxifyScorer)
    costs = tox.cost(["p"] * len(TEXTS), TEXTS, torch.tensor([9, 8, 1, 2]))  # (N,)
    assert costs.dtype == torch.float32 and costs.shape == (len(TEXTS),)
    assert costs.tolist() == pytest.approx(tiny_detoxify.by_hand(TEXTS), abs=1e-6)
    assert costs.tolist() == pytest.approx(tox.scorer(TEXTS), abs=1e-7)


def test_missing_local_checkpoint_fails_at_construction_naming_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^constraints\.toxicity\.scorer\.checkpoint="
                       r".*nope\.ckpt is not a file"):
        DetoxifyScorer(checkpoint=str(tmp_path / "nope.ckpt"))


def test_primal_dual_run_with_the_local_detoxify_logs_its_mean_as_g(tiny_detoxify, no_torch_hub,
                                                                    tmp_path, monkeypatch):
    """Two steps, a fresh rollout each (importance weights 1), so g/toxicity = the mean of what
    the Detoxify scorer returned for that step's responses."""
    calls: list[list[float]] = []
    score = DetoxifyScorer.__call__

    def recorded(self, texts):
        calls.append(score(self, texts))
        return calls[-1]

    monkeypatch.setattr(DetoxifyScorer, "__call__", recorded)
    cfg = compose(tiny_overrides("method=primal_dual", "constraints=[toxicity]", "train.steps=2",
                                 "train.rollout_every=1", "train.rollout.prompts_per_rollout=4",
                                 "train.rollout.max_new_tokens=6", tiny_detoxify.override, FP32))
    train(cfg, tmp_path / "run")
    rows = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))[0]
    assert len(rows) == 2
    for step, row in enumerate(rows):
        assert 0.0 <= row["g/toxicity"] <= 1.0
        assert len(calls[step]) == 4
        assert row["g/toxicity"] == pytest.approx(sum(calls[step]) / 4, abs=1e-6)
