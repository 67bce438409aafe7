"""KTO: the loss against hand-worked numbers and an independent implementation of TRL's
KTOTrainer formula, the reference point from mismatched rows, TRL's class-weight guidance, the
unpaired data path, and KTO / primal-dual KTO through the one trainer on the tiny model."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pdalign.training.build
from pdalign.data.features import build_dataset, collate, tokenize_unpaired
from pdalign.data.preference import (
    UnpairedRow,
    load_preference_rows,
    load_unpaired_rows,
    unpair_rows,
)
from pdalign.data.readers import PreferenceDataError
from pdalign.objectives.kto import KTO, kto_loss, kto_reference_point
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import FIXTURES, FP32, compose, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def t(*xs: float, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=dtype, requires_grad=grad)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def fixture_unpaired(path: Path, n_pairs: int | None = None) -> Path:
    """The fixture pairs as unpaired rows (chosen -> true, rejected -> false), a real file."""
    pairs = [json.loads(line) for line in (FIXTURES / "pairs.jsonl").read_text().splitlines()]
    rows = []
    for p in pairs[:n_pairs]:
        rows += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                 {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
    return write_jsonl(path, rows)


# ---- an independent implementation of TRL's formula (trl/trainer/kto_trainer.py,
# KTOTrainer._compute_loss with loss_type="kto"), written the way TRL writes it: the KL
# estimate is gathered across ranks, averaged, then clamped; rows are split by label into a
# chosen and a rejected block, each scored with 1 - sigmoid, weighted, concatenated, nanmean.


def trl_kto(policy_logps, ref_logps, labels, kl_logps, ref_kl_logps, beta, w_d, w_u,
            other_ranks_kl=()):
    kl = (kl_logps - ref_kl_logps).mean().detach()
    kl = torch.stack([kl, *other_ranks_kl]).mean().clamp(min=0)  # gather_for_metrics, mean
    chosen_idx = torch.nonzero(labels, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~labels, as_tuple=False).view(-1)
    chosen_logratios = policy_logps[chosen_idx] - ref_logps[chosen_idx]
    rejected_logratios = policy_logps[rejected_idx] - ref_logps[rejected_idx]
    chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - F.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat((w_d * chosen_losses, w_u * rejected_losses), 0)
    return {"loss": losses.nanmean(), "kl": kl, "chosen_losses": w_d * chosen_losses,
            "rejected_losses": w_u * rejected_losses,
            "rewards/chosen": (beta * chosen_logratios).mean(),
            "rewards/rejected": (beta * rejected_logratios).mean()}


# ---- the loss, by hand -------------------------------------------------------------------------


def _out(policy, ref, label, kl, ref_kl, dtype=torch.float64):
    return {"completion_logps": t(*policy, dtype=dtype), "ref_completion_logps": t(*ref, dtype=dtype),
            "kl_logps": t(*kl, dtype=dtype), "ref_kl_logps": t(*ref_kl, dtype=dtype),
            "label": torch.tensor(label), "completion_n_tokens": t(*[3.0] * len(policy)),
            "kl_n_tokens": t(*[3.0] * len(policy))}


def test_kto_hand_values():
    """Row 0 desirable: policy -1, ref -1.5 -> r = 0.5. Row 1 undesirable: -2 vs -1.5 -> r = -0.5.
    Mismatched rows: log-ratios -3 - -3.2 = 0.2 and -3 - -3 = 0, so z0 = 0.1. beta = 0.1.

    desirable:   1 - sigmoid(0.1 * (0.5 - 0.1)) = 1 - sigmoid(0.04) = 1/(1 + e^0.04)
                 = 1/2.0408108 = 0.4900013
    undesirable: 1 - sigmoid(0.1 * (0.1 - -0.5)) = 1 - sigmoid(0.06) = 1/(1 + e^0.06)
                 = 1/2.0618365 = 0.4850045
    weights w_D = 1, w_U = 2: losses (0.4900013, 0.9700090), batch mean 0.7300052.
    rewards 0.1 * r: 0.05 and -0.05, margin 0.1; both rows on their label's side of z0
    (0.5 > 0.1, -0.5 < 0.1): accuracy 1.
    """
    out = _out([-1.0, -2.0], [-1.5, -1.5], [True, False], [-3.0, -3.0], [-3.2, -3.0])
    losses, metrics = KTO(beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)(out)
    assert losses.dtype == torch.float64
    assert losses.tolist() == pytest.approx([0.4900013, 0.9700090], abs=1e-7)
    assert float(losses.mean()) == pytest.approx(0.7300052, abs=1e-7)
    assert metrics["kl"] == pytest.approx(0.1, abs=1e-12)
    assert metrics["rewards/chosen"] == pytest.approx(0.05, abs=1e-12)
    assert metrics["rewards/rejected"] == pytest.approx(-0.05, abs=1e-12)
    assert metrics["rewards/margins"] == pytest.approx(0.1, abs=1e-12)
    assert metrics["rewards/accuracies"] == 1.0
    assert metrics["logps/chosen"] == -1.0 and metrics["logps/rejected"] == -2.0


def test_reference_point_is_clamped_at_zero_and_carries_no_gradient():
    """Mismatched log-ratios -0.3 and -0.1: mean -0.2 < 0 -> z0 = 0 (a sampled KL estimate can
    come out negative; KL cannot). Then desirable r = 0 gives 1 - sigmoid(0) = 0.5 exactly."""
    kl = t(-1.3, -1.1, grad=True)
    z0 = kto_reference_point(kl, t(-1.0, -1.0))
    assert float(z0) == 0.0 and not z0.requires_grad
    policy = t(-1.0, -1.0, grad=True)
    losses, _ = kto_loss(policy, t(-1.0, -1.0), torch.tensor([True, False]),
                         kto_reference_point(kl, t(-1.0, -1.0)), beta=0.5)
    assert losses.tolist() == pytest.approx([0.5, 0.5], abs=1e-15)
    losses.sum().backward()
    assert kl.grad is None  # z0 is a constant of the loss, as in TRL (computed under no_grad)
    # d/dp (1 - sigmoid(beta (p - ref))) = -beta s (1 - s) = -0.5 * 0.25 at p = ref; the
    # undesirable row's sign is the opposite
    assert policy.grad.tolist() == pytest.approx([-0.125, 0.125], abs=1e-15)


def test_reference_point_averages_ranks_before_clamping():
    """Rank estimates +0.3 and -0.5 average to -0.1 -> z0 = 0, TRL's order (gather, mean, clamp);
    clamping each rank first would give (0.3 + 0) / 2 = 0.15."""
    def reduce_mean(z):  # what an all-reduce mean with the other rank's -0.5 returns
        return (z + t(-0.5)[0]) / 2

    z0 = kto_reference_point(t(0.3), t(0.0), reduce_mean)
    assert float(z0) == 0.0
    assert float(kto_reference_point(t(0.9), t(0.0), reduce_mean)) == pytest.approx(0.2)


def test_gradient_raises_desirable_and_lowers_undesirable_log_probs():
    policy = t(-2.0, -2.0, grad=True)
    losses, _ = kto_loss(policy, t(-2.5, -1.5), torch.tensor([True, False]), t(0.1)[0], 0.1)
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_bad_weights_and_beta_fail_at_construction():
    for kwargs in ({"beta": 0.0}, {"desirable_weight": -1.0}, {"undesirable_weight": math.nan},
                   {"desirable_weight": 0.0, "undesirable_weight": 0.0}):
        with pytest.raises(ValueError):
            KTO(**kwargs)


# ---- parity with TRL's formula ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_trl_formula_fp64(seed):
    """Random summed log-probs, labels (at least one of each, or all of one kind), weights and
    beta; our per-row losses, batch loss, z0 and group rewards against the TRL-style code
    above, in fp64, to 1e-12 (the issue asks 1e-5; 1 - sigmoid(u) and sigmoid(-u) differ in
    the last bits only)."""
    g = torch.Generator().manual_seed(seed)
    b = 3 + seed
    policy = -torch.rand(b, generator=g, dtype=torch.float64) * 40
    ref = policy + torch.randn(b, generator=g, dtype=torch.float64) * 3
    kl = -torch.rand(b, generator=g, dtype=torch.float64) * 40
    ref_kl = kl + torch.randn(b, generator=g, dtype=torch.float64) * 2 - (0.5 if seed % 2 else -0.5)
    labels = torch.rand(b, generator=g) < 0.5
    labels[0], labels[1] = True, seed == 5  # seed 5: all desirable
    beta = [0.1, 0.5, 0.01, 1.0, 0.3, 2.0][seed]
    w_d, w_u = [(1.0, 1.0), (1.0, 1.33), (0.7, 1.0), (2.0, 0.5), (1.0, 3.0), (1.0, 1.0)][seed]
    ours, metrics = KTO(beta, w_d, w_u)({"completion_logps": policy, "ref_completion_logps": ref,
                                         "kl_logps": kl, "ref_kl_logps": ref_kl, "label": labels})
    trl = trl_kto(policy, ref, labels, kl, ref_kl, beta, w_d, w_u)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours[labels], trl["chosen_losses"], rtol=0, atol=1e-12)
    assert torch.allclose(ours[~labels], trl["rejected_losses"], rtol=0, atol=1e-12)
    assert float(ours.mean()) == pytest.approx(float(trl["loss"]), abs=1e-12)
    assert metrics["kl"] == pytest.approx(float(trl["kl"]), abs=1e-12)
    assert metrics["rewards/chosen"] == pytest.approx(float(trl["rewards/chosen"]), abs=1e-12)
    if (~labels).any():
        assert metrics["rewards/rejected"] == pytest.approx(float(trl["rewards/rejected"]),
                                                            abs=1e-12)
    else:  # TRL logs no rejected metrics for such a batch; neither do we
        assert "rewards/rejected" not in metrics and "rewards/margins" not in metrics


def test_parity_with_trl_on_a_tiny_model(tokenizer):
    """The whole path on real tokens (fp64 model, TRL side in fp64): unpaired rows -> tokenize -> collate (responses
    rotated within the batch) -> shared-prompt log-probs of policy and reference -> KTO,
    against TRL's way: each (prompt, completion) and each (prompt_i, completion_{i-1}) row run
    on its own through the full model, full-vocabulary log_softmax, completion tokens summed,
    then TRL's formula. A policy and a reference with different random decoder weights and
    the same LM head (as every pdalign reference has: the frozen head, or a copy of it)."""
    from pdalign.policy.logprobs import sequence_logps
    from pdalign.policy.models import build_tiny

    policy = build_tiny(len(tokenizer), seed=0).double().eval()
    ref = build_tiny(len(tokenizer), seed=1).double().eval()
    with torch.no_grad():
        ref.get_output_embeddings().weight.copy_(policy.get_output_embeddings().weight)
    rows = [UnpairedRow("Name a fruit.", "An apple.", True, 0, "mem", "row 1"),
            UnpairedRow("What is two plus two?", "Five, I think, or maybe six.", False, 1,
                        "mem", "row 2"),
            UnpairedRow("Say hi.", "Hi!", True, 2, "mem", "row 3"),
            UnpairedRow("Give me a color.", "I can't help with that.", False, 3, "mem", "row 4")]
    features = [tokenize_unpaired(tokenizer, r, max_length=128) for r in rows]
    batch = collate(features, tokenizer.pad_token_id)
    b = len(rows)
    with torch.no_grad():
        out = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["labels"],
                             with_ref=True, ref_model=ref, pairs=b)
    ours, metrics = KTO(beta=0.5, undesirable_weight=1.5)({
        "completion_logps": out.logps[:b], "kl_logps": out.logps[b:],
        "ref_completion_logps": out.ref_logps[:b], "ref_kl_logps": out.ref_logps[b:],
        "label": batch["label"]})

    def completion_logp(model, prompt, completion):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        targets = ids[0, 1:]
        per_token = logp.gather(1, targets[:, None])[:, 0]
        return per_token[len(prompt) - 1:].sum()  # positions predicting completion tokens

    completions = [f["completion_ids"] for f in features]
    kl_completions = [completions[-1]] + completions[:-1]  # TRL's add_kl_completion_ids
    cols = {name: torch.stack([completion_logp(m, f["prompt_ids"], c)
                               for f, c in zip(features, comp)])
            for name, m, comp in (("p", policy, completions), ("r", ref, completions),
                                  ("pk", policy, kl_completions), ("rk", ref, kl_completions))}
    labels = torch.tensor([r.label for r in rows])
    trl = trl_kto(cols["p"], cols["r"], labels, cols["pk"], cols["rk"], 0.5, 1.0, 1.5)
    # pdalign's log-prob kernel returns fp32 sums (~40 tokens of log-probs ~ -1 to -5 each:
    # ~1e-5 absolute), so this path is held to the 1e-5; the loss itself is checked to
    # 1e-12 in fp64 on identical log-probs above
    assert torch.allclose(out.logps.double(), torch.cat([cols["p"], cols["pk"]]), rtol=1e-6)
    assert torch.allclose(out.ref_logps.double(), torch.cat([cols["r"], cols["rk"]]), rtol=1e-6)
    assert float(ours.mean()) == pytest.approx(float(trl["loss"]), abs=1e-5)
    assert torch.allclose(ours[labels].double(), trl["chosen_losses"], rtol=0, atol=1e-5)
    assert torch.allclose(ours[~labels].double(), trl["rejected_losses"], rtol=0, atol=1e-5)
    assert metrics["kl"] == pytest.approx(float(trl["kl"]), abs=1e-5)
    assert abs(float(trl["loss"]) - 0.5 * (1.0 + 1.5) / 2) > 1e-3  # not the trivial r = z0 = 0


# ---- TRL's guidance on the class weights ------------------------------------------------------


def test_balance_check_follows_trl_rule(caplog):
    """300 desirable vs 100 undesirable rows. TRL's ranges (KTO paper Eq. 8, bounds rounded to 2
    decimals): desirable_weight in [100 w_U / 300, 1.33 * 100 w_U / 300] or undesirable_weight
    in [300 w_D / (1.33 * 100), 300 w_D / 100].

    w = (1, 1): [0.33, 0.44] and [2.26, 3.0]; neither holds -> warning naming both ranges.
    w_D = 0.4: inside its range -> quiet. w_U = 2.5: inside -> quiet.
    Both moved, (0.4, 2.5): the ranges move with the other weight, [0.83, 1.11] and [0.9, 1.2],
    and neither holds -> warning ("EITHER ... OR ..., not both").
    Equal counts: no check.
    """
    with caplog.at_level(logging.WARNING, logger="pdalign"):
        message = KTO().check_balance(300, 100)
    assert "objectives.kto.desirable_weight in [0.33, 0.44]" in message
    assert "objectives.kto.undesirable_weight in [2.26, 3.0]" in message
    assert message in caplog.text
    assert KTO(desirable_weight=0.4).check_balance(300, 100) is None
    assert KTO(undesirable_weight=2.5).check_balance(300, 100) is None
    both = KTO(desirable_weight=0.4, undesirable_weight=2.5).check_balance(300, 100)
    assert "[0.83, 1.11]" in both and "[0.9, 1.2]" in both
    assert KTO(desirable_weight=5.0).check_balance(50, 50) is None


def test_imbalanced_training_data_warns_at_start_before_the_model(tmp_path, tokenizer, caplog):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 4 != 0}
            for i in range(40)]  # 30 desirable, 10 undesirable
    cfg = compose(tiny_overrides("method=kto", f"data.train={write_jsonl(tmp_path / 'u.jsonl', rows)}"))
    with caplog.at_level(logging.WARNING, logger="pdalign"):
        train_set, _, _ = pdalign.training.build.build_datasets(cfg, tokenizer)
    assert sum(f["label"] for f in train_set) == 30
    assert "30 desirable and 10 undesirable" in caplog.text
    assert "undesirable_weight in [2.26, 3.0]" in caplog.text


# ---- data ---------------------------------------------------------------------------------------


def test_unpaired_jsonl_parquet_and_dataset_load_alike(tmp_path):
    import datasets

    records = [{"prompt": "Name a fruit.", "completion": "An apple.", "label": True},
               {"prompt": [{"role": "user", "content": "Say hi."}],
                "completion": [{"role": "assistant", "content": "No."}], "label": False}]
    path = write_jsonl(tmp_path / "u.jsonl", records)
    rows, skipped = load_unpaired_rows(path)
    assert not skipped
    assert [(r.completion, r.label, r.index, r.location) for r in rows] == [
        ("An apple.", True, 0, "line 1"),
        ([{"role": "assistant", "content": "No."}], False, 1, "line 2")]
    plain = [records[0], {"prompt": "Say hi.", "completion": "No.", "label": False}]
    datasets.Dataset.from_list(plain * 2).to_parquet(tmp_path / "u.parquet")
    from_parquet, _ = load_unpaired_rows(tmp_path / "u.parquet")
    assert [(r.completion, r.label, r.location) for r in from_parquet] == [
        ("An apple.", True, "row 1"), ("No.", False, "row 2"), ("An apple.", True, "row 3"),
        ("No.", False, "row 4")]
    renamed = [{"q": r["prompt"], "text": r["completion"], "good": r["label"]} for r in plain]
    from_ds, _ = load_unpaired_rows(datasets.Dataset.from_list(renamed),
                                    {"prompt": "q", "completion": "text", "label": "good"})
    assert [(r.completion, r.label) for r in from_ds] == [("An apple.", True), ("No.", False)]


BAD_UNPAIRED = {  # case: (line 2, field, reason, words the message must hold)
    "label_as_string": ({"prompt": "q", "completion": "a", "label": "yes"}, "label",
                        "wrong_label", ["got str 'yes'", "JSON boolean"]),
    "label_as_int": ({"prompt": "q", "completion": "a", "label": 1}, "label", "wrong_label",
                     ["got int 1"]),
    "missing_label": ({"prompt": "q", "completion": "a"}, "label", "missing_column",
                      ["data.columns.label="]),
    "empty_completion": ({"prompt": "q", "completion": " ", "label": True}, "completion",
                         "empty", ["whitespace"]),
    "pair_row": ({"prompt": "q", "chosen": "a", "rejected": "b"}, "completion", "missing_column",
                 ["data.unpair=true"]),
}


@pytest.mark.parametrize("case", sorted(BAD_UNPAIRED))
def test_bad_unpaired_row_is_one_error_naming_row_field_and_fix(tmp_path, case):
    bad, field, reason, words = BAD_UNPAIRED[case]
    good = [{"prompt": "a", "completion": "b", "label": True},
            {"prompt": "c", "completion": "d", "label": False}]
    path = write_jsonl(tmp_path / f"{case}.jsonl", [good[0], bad, good[1]])
    with pytest.raises(PreferenceDataError) as info:
        load_unpaired_rows(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 2, field '{field}'") and "Fix:" in message
    assert info.value.reason == reason
    for word in words:
        assert word in message, message
    rows, skipped = load_unpaired_rows(path, skip_invalid=True)
    assert skipped == {reason: 1} and [r.index for r in rows] == [0, 2]


def test_a_file_of_one_label_is_an_error_naming_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "up.jsonl", [{"prompt": "a", "completion": "b", "label": True},
                                               {"prompt": "c", "completion": "d", "label": True}])
    with pytest.raises(PreferenceDataError, match=r"every one of its 2 rows has label=true.*"
                                                  r"Fix: add rows with label=false to data\.train"):
        load_unpaired_rows(path)


def test_unpaired_file_under_a_pair_objective_names_method_kto(tmp_path):
    path = fixture_unpaired(tmp_path / "u.jsonl", 2)
    with pytest.raises(PreferenceDataError, match=r"field 'chosen'.*Fix: these are unpaired rows "
                                                  r"\(completion, label\): train on them with "
                                                  r"method=kto"):
        load_preference_rows(path)


def test_unpair_splits_each_pair_into_a_desirable_and_an_undesirable_row():
    pairs, _ = load_preference_rows(FIXTURES / "pairs.jsonl")
    rows = unpair_rows(pairs[:3])
    assert [(r.completion, r.label, r.index) for r in rows] == [
        (pairs[0].chosen, True, 0), (pairs[0].rejected, False, 1), (pairs[1].chosen, True, 2),
        (pairs[1].rejected, False, 3), (pairs[2].chosen, True, 4), (pairs[2].rejected, False, 5)]
    assert rows[0].prompt == rows[1].prompt == pairs[0].prompt


def test_build_dataset_unpairs_a_pair_file_and_keeps_halves_together(tokenizer, tmp_path):
    train_set, held, _ = build_dataset(tokenizer, FIXTURES / "pairs.jsonl", heldout_fraction=0.25,
                                       unpaired=True, unpair=True, max_length=64)
    assert len(train_set) + len(held) == 2 * 48
    assert sum(f["label"] for f in train_set) * 2 == len(train_set)  # both halves of each pair
    prompts = {tuple(f["prompt_ids"]) for f in held}
    assert not prompts & {tuple(f["prompt_ids"]) for f in train_set}
    with pytest.raises(PreferenceDataError, match="data.unpair=true"):  # the switch left off
        build_dataset(tokenizer, FIXTURES / "pairs.jsonl", unpaired=True)


def test_collate_rotates_completions_within_the_batch(tokenizer):
    """Rows 0..B-1 are (x_i, y_i); rows B..2B-1 are (x_i, y_{i-1}), (x_0, y_{B-1}) first; a
    mismatched completion longer than its prompt's room is cut to it; labels mask prompts."""
    rows = [UnpairedRow("Hi?", "Hello there, friend, how are you today?", True, 0, "m", "r1"),
            UnpairedRow("A much longer question about the weather in Paris in spring?", "Warm.",
                        False, 1, "m", "r2"),
            UnpairedRow("Ok?", "Yes.", True, 2, "m", "r3")]
    # the template's system turn makes every prompt ~30 tokens; leave row 1 (the longest
    # prompt) 4 tokens of room, fewer than y_0 has
    longest = len(tokenize_unpaired(tokenizer, rows[1])["prompt_ids"])
    max_length = longest + 4
    features = [tokenize_unpaired(tokenizer, r, max_length=max_length) for r in rows]
    assert features[1]["room"] < len(features[0]["completion_ids"])  # row 1's room cuts y_0
    batch = collate(features, tokenizer.pad_token_id)
    assert batch["label"].tolist() == [True, False, True]
    assert batch["input_ids"].shape[0] == 6

    def row(i):
        n = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n].tolist()
        first = next(j for j, x in enumerate(labels) if x != -100)
        return ids[:first], ids[first:]

    f = features
    assert row(0) == (f[0]["prompt_ids"], f[0]["completion_ids"])
    assert row(3) == (f[0]["prompt_ids"], f[2]["completion_ids"])
    assert row(4) == (f[1]["prompt_ids"], f[0]["completion_ids"][:f[1]["room"]])
    assert row(5) == (f[2]["prompt_ids"], f[1]["completion_ids"])
    assert all(len(p) + len(c) <= max_length for p, c in map(row, range(6)))


# ---- start-up errors, before the model ---------------------------------------------------------


@pytest.mark.parametrize("overrides, pattern", [
    (["train.batch_size=1"], r"^train\.batch_size=1: KTO estimates its reference point .* "
                             r"Set train\.batch_size >= 2$"),
    (["train.precompute_ref_logps=true"], r"^train\.precompute_ref_logps=true cannot serve KTO.*"
                                          r"Set train\.precompute_ref_logps=false$"),
    ([], r"field 'completion'.*Fix: these are preference pairs: set data\.unpair=true"),
], ids=["batch_size_1", "precompute", "pairs_without_unpair"])
def test_kto_config_errors_come_before_the_model(tmp_path, no_model, overrides, pattern):
    cfg = compose(tiny_overrides("method=kto", *overrides,
                                 *(["data.unpair=true"] if overrides else [])))
    with pytest.raises(ValueError, match=pattern):
        train(cfg, tmp_path / "run")


# ---- through the trainer ------------------------------------------------------------------------


def fixture_pairs(path: Path, n_pairs: int) -> Path:
    """The first fixture pairs as a pair file (data.unpair=true splits it like data.train)."""
    lines = (FIXTURES / "pairs.jsonl").read_text().splitlines()[:n_pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(tmp_path, *overrides):
    held = fixture_pairs(tmp_path / "held.jsonl", 6)
    cfg = compose(tiny_overrides(*overrides, f"data.heldout={held}", FP32))
    summary = train(cfg, tmp_path / "run")
    return summary, split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))


def test_kto_trains_desirable_up_and_undesirable_down(tmp_path):
    """method=kto on the fixture pairs, unpaired: the implicit reward of desirable rows rises
    above that of undesirable ones, and the held-out label accuracy is logged."""
    summary, (steps, evals) = _run(tmp_path, "method=kto", "data.unpair=true", "train.steps=8")
    assert summary["steps"] == 8 and len(steps) == 8
    assert steps[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # step 1: policy = reference
    assert steps[0]["kl"] == 0.0
    late = [r["rewards/margins"] for r in steps[-4:] if "rewards/margins" in r]
    assert late and sum(late) / len(late) > 0.05
    assert evals[-1]["eval/pref_accuracy"] > 0.5 and evals[-1]["eval/reward_margin"] > 0


def test_primal_dual_kto_moves_lambda_with_the_kl_budget(tmp_path):
    """method=primal_dual method.objective=kto: the Lagrangian and the dual step unchanged; a
    KL budget small enough to be violated pulls lambda up from 0, and the loss the step
    logs is L_KTO + lambda (g - eps) with the lambda of that step."""
    summary, (steps, _) = _run(tmp_path, "method=primal_dual", "method.objective=kto",
                               "data.unpair=true", "train.steps=4", "constraints=[kl_budget]",
                               "constraints.kl_budget.epsilon=1e-4")
    assert summary["steps"] == 4
    assert steps[-1]["lambda_next/kl_budget"] > 0
    for r in steps:
        want = r["loss/pref"] + r["lambda/kl_budget"] * (r["g/kl_budget"] - r["eps/kl_budget"])
        assert r["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_reference_point_is_averaged_across_two_real_ranks(tmp_path):
    """Two CPU ranks under torchrun (gloo), method=kto: each rank's batch gives its own local
    mean log-ratio on the mismatched rows; the z0 both ranks train with is the same number,
    max(0, mean of the two). The held-out evaluation on the main rank alone (no all-reduce)
    does not hang."""
    held = fixture_pairs(tmp_path / "held.jsonl", 4)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533",
         str(ROOT / "tests" / "kto_dist_worker.py"), str(tmp_path), str(held)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = ranks[0]["calls"], ranks[1]["calls"]
    assert len(a) == len(b) == 3  # one training call per step
    for x, y in zip(a, b):
        assert x["z0"] == y["z0"] == pytest.approx(max(0.0, (x["local"] + y["local"]) / 2),
                                                   abs=1e-6)
    assert any(x["local"] != y["local"] for x, y in zip(a, b))  # so agreement is the reduce's
    assert ranks[0]["eval_calls"] >= 1 and ranks[1]["eval_calls"] == 0
