"""Preference data path: loading, validation, chat template, masking, truncation, collation."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from pdalign.data.features import (
    IGNORE_INDEX,
    PreferenceCollator,
    build_dataset,
    collate,
    tokenize_pair,
    tokenize_rows,
)
from pdalign.data.preference import load_preference_rows, split_heldout
from pdalign.data.readers import QUICKSTART, QUICKSTART_HELDOUT, PreferenceDataError, bundled_path
from tests.conftest import FIXTURES, compose, tiny_overrides

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris is the capital of France.",
     "rejected": "Lyon."},
    {"prompt": "Name a primary color.", "chosen": "Red is a primary color.",
     "rejected": "Green, probably."},
    {"prompt": "How many legs does a spider have?", "chosen": "A spider has eight legs.",
     "rejected": "Six."},
]


def as_messages(pair: dict) -> dict:
    """TRL's conversational form of a plain pair."""
    return {"prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def write_jsonl(path: Path, records: list) -> Path:
    """Write records one per line; a str record is written verbatim (for malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def one_row(tmp_path: Path, record: dict):
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "one.jsonl", [record]))
    return rows[0]


# ---- loading -----------------------------------------------------------------------------

def test_jsonl_strings_keep_order_index_and_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], "", PAIRS[1], PAIRS[2]])
    rows, skipped = load_preference_rows(path)
    assert [r.prompt for r in rows] == [p["prompt"] for p in PAIRS]
    assert [r.chosen for r in rows] == [p["chosen"] for p in PAIRS]
    assert [r.index for r in rows] == [0, 1, 2]
    # the blank line 2 is not a row, but line numbers still count it
    assert [r.location for r in rows] == ["line 1", "line 3", "line 4"]
    assert rows[0].source == str(path) and not skipped


def test_jsonl_chat_messages(tmp_path):
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "m.jsonl",
                                               [as_messages(p) for p in PAIRS]))
    assert rows[1].prompt == [{"role": "user", "content": PAIRS[1]["prompt"]}]
    assert rows[1].rejected == [{"role": "assistant", "content": PAIRS[1]["rejected"]}]


def test_json_array_and_json_lines_under_json_name(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps(PAIRS))
    rows, _ = load_preference_rows(array)
    assert [r.chosen for r in rows] == [p["chosen"] for p in PAIRS]
    assert rows[2].location == "row 3"
    lines = write_jsonl(tmp_path / "l.json", PAIRS)  # what datasets' to_json writes
    assert [r.chosen for r in load_preference_rows(lines)[0]] == [p["chosen"] for p in PAIRS]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), path)
    rows, _ = load_preference_rows(path)
    assert [r.rejected for r in rows] == [p["rejected"] for p in PAIRS]
    assert rows[0].location == "row 1"


def test_datasets_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([as_messages(p) for p in PAIRS])
    rows, _ = load_preference_rows(ds)
    assert rows[2].chosen[0]["content"] == PAIRS[2]["chosen"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS[:1]),
                               "test": datasets.Dataset.from_list(PAIRS[1:])})
    assert len(load_preference_rows(dd, split="test")[0]) == 2
    with pytest.raises(PreferenceDataError, match="no split 'valid'.*'train', 'test'"):
        load_preference_rows(dd, split="valid")


def test_name_goes_to_load_dataset(tmp_path, monkeypatch):
    import datasets

    # datasets reads its cache root at call time; keep its arrow files out of ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "local_set"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PAIRS)
    rows, _ = load_preference_rows(str(folder), split="train")
    assert [r.prompt for r in rows] == [p["prompt"] for p in PAIRS]


def test_column_remapping(tmp_path):
    records = [{"question": p["prompt"], "good": p["chosen"], "bad": p["rejected"]}
               for p in PAIRS]
    path = write_jsonl(tmp_path / "renamed.jsonl", records)
    rows, _ = load_preference_rows(path, columns={"prompt": "question", "chosen": "good",
                                                  "rejected": "bad"})
    assert rows[0].prompt == PAIRS[0]["prompt"] and rows[0].rejected == PAIRS[0]["rejected"]
    with pytest.raises(ValueError, match="unknown key 'answer'"):
        load_preference_rows(path, columns={"answer": "good"})


def test_bundled_path_names_the_choices():
    assert bundled_path("quickstart").is_file()
    with pytest.raises(PreferenceDataError, match="builtin:quickstart_heldout"):
        bundled_path("nope")


# ---- validation --------------------------------------------------------------------------

BAD_LINES = {  # case: (line 3's content, field named, reason, words the message must hold)
    "missing_column": ({"question": "q", "chosen": "a", "rejected": "b"}, "prompt",
                       "missing_column", ["set data.columns.prompt=", "'question'"]),
    "empty_whitespace": ({"prompt": "q", "chosen": "  \n\t", "rejected": "b"}, "chosen",
                         "empty", ["whitespace"]),
    "not_a_string": ({"prompt": "q", "chosen": "a", "rejected": 7}, "rejected",
                     "wrong_type", ["got int", "role"]),
    "message_without_content": (
        {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt",
        "wrong_type", ["message 1", "content"]),
    "answer_not_from_assistant": (
        {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        "chosen", "wrong_type", ["'user'", "'assistant'"]),
    "identical": ({"prompt": "q", "chosen": "Same answer.", "rejected": " Same answer. "},
                  "rejected", "identical", ["identical"]),
    "invalid_json": ('{"prompt": "q", "chosen": "a", "rejected": ', None, "invalid_json",
                     ["invalid JSON"]),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_each_bad_row_raises_one_error_naming_file_row_field_and_fix(tmp_path, case):
    bad, field, reason, words = BAD_LINES[case]
    path = write_jsonl(tmp_path / f"{case}.jsonl", [PAIRS[0], PAIRS[1], bad, PAIRS[2]])
    with pytest.raises(PreferenceDataError) as info:
        load_preference_rows(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 3")
    assert "Fix:" in message
    if field:
        assert f"field '{field}'" in message
    assert info.value.reason == reason
    for word in words:
        assert word in message
    # the same file under skip_invalid: the bad row is counted and the rest kept
    rows, skipped = load_preference_rows(path, skip_invalid=True)
    assert skipped == {reason: 1}
    assert [r.index for r in rows] == [0, 1, 3]


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PreferenceDataError, match=f"^{empty}: contains no rows"):
        load_preference_rows(empty, skip_invalid=True)
    with pytest.raises(PreferenceDataError, match="file not found"):
        load_preference_rows(tmp_path / "absent.jsonl")


def test_skip_invalid_counts_per_reason_and_fails_when_nothing_is_left(tmp_path):
    records = [PAIRS[0], "{oops", {"prompt": "", "chosen": "a", "rejected": "b"},
               {"prompt": "q", "chosen": "a"}, "not json either", PAIRS[1]]
    rows, skipped = load_preference_rows(write_jsonl(tmp_path / "mixed.jsonl", records),
                                         skip_invalid=True)
    assert len(rows) == 2
    assert skipped == {"invalid_json": 2, "empty": 1, "missing_column": 1}
    all_bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"prompt": "q"}])
    with pytest.raises(PreferenceDataError, match="every row is invalid.*line 1"):
        load_preference_rows(all_bad, skip_invalid=True)


def test_prompt_too_long_names_row_and_can_be_skipped(tokenizer, tmp_path):
    long_prompt = "Tell me about rivers. " * 40
    path = write_jsonl(tmp_path / "long.jsonl", [PAIRS[0], {**PAIRS[1], "prompt": long_prompt}])
    rows, _ = load_preference_rows(path)
    with pytest.raises(PreferenceDataError) as info:
        tokenize_rows(tokenizer, rows, max_length=64, max_prompt_length=None)
    assert str(info.value).startswith(f"{path}, line 2, field 'prompt'")
    assert "max_length=64" in str(info.value)
    # on_overlong=error makes an over-long prompt an error even when it would fit
    with pytest.raises(PreferenceDataError, match="over max_prompt_length=48"):
        tokenize_rows(tokenizer, rows, max_length=512, max_prompt_length=48,
                      on_overlong="error")
    features, skipped = tokenize_rows(tokenizer, rows, max_length=64, skip_invalid=True)
    assert [f["index"] for f in features] == [0] and skipped == {"prompt_too_long": 1}


def test_overlong_rows_are_counted_at_start_and_on_overlong_chooses(tokenizer, tmp_path,
                                                                     caplog):
    """A 5,000-word prompt and a long answer among short pairs: truncate (the default) cuts
    them and says how many and from what length, per data set; error stops at the row naming
    the field and the fix; skip drops the row and counts it as overlong."""
    huge = " ".join(f"word{i}" for i in range(5000))
    long_answer = "A long answer. " * 60
    path = write_jsonl(tmp_path / "long.jsonl", [PAIRS[0], {**PAIRS[1], "prompt": huge},
                                                 {**PAIRS[2], "chosen": long_answer}])
    rows, _ = load_preference_rows(path)
    budget = {"max_length": 96, "max_prompt_length": 48}
    with caplog.at_level("WARNING", logger="pdalign.data.features"):
        features, skipped = tokenize_rows(tokenizer, rows, **budget)
    assert len(features) == 3 and not skipped
    huge_len = features[1]["truncated"]["prompt"]
    assert huge_len > 5000 and features[1]["prompt_len"] == 48
    answer_len = features[2]["truncated"]["chosen"]
    assert features[2]["chosen_len"] == 96 - features[2]["prompt_len"] < answer_len
    assert features[0]["truncated"] == {}
    (note,) = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert note == (f"{path}: truncated 1 of 3 prompts to max_prompt_length=48 tokens (the "
                    f"longest had {huge_len}) and 1 of 6 responses to fit max_length=96 (the "
                    f"longest had {answer_len}) (data.on_overlong=error stops at such a row, "
                    f"=skip drops it)")
    with pytest.raises(PreferenceDataError, match=r"line 2, field 'prompt': the prompt has \d+ "
                       r"tokens, over max_prompt_length=48\. Fix: .*data\.on_overlong=truncate"):
        tokenize_rows(tokenizer, rows, **budget, on_overlong="error")
    with pytest.raises(PreferenceDataError, match=r"line 3, field 'chosen': the response has "
                       r"\d+ tokens, over max_length=96 after its \d+-token prompt"):
        tokenize_rows(tokenizer, [rows[0], rows[2]], **budget, on_overlong="error")
    kept, skipped = tokenize_rows(tokenizer, rows, **budget, on_overlong="skip")
    assert [f["index"] for f in kept] == [0] and skipped == {"overlong": 2}
    caplog.clear()
    with caplog.at_level("WARNING", logger="pdalign.data.features"):
        tokenize_rows(tokenizer, [rows[0]], **budget)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


def test_on_overlong_error_stops_the_run_before_the_model_and_a_bad_value_is_named(
        tmp_path, no_model):
    from pdalign.training.trainer import train

    huge = " ".join(f"word{i}" for i in range(5000))
    pairs = [json.loads(line) for line in (FIXTURES / "pairs.jsonl").read_text().splitlines()]
    pairs[4]["prompt"] = huge
    data = write_jsonl(tmp_path / "d.jsonl", pairs)
    with pytest.raises(PreferenceDataError, match=r"line 5, field 'prompt'.*over "
                                                  r"max_prompt_length"):
        train(compose(tiny_overrides(f"data.train={data}", "data.on_overlong=error")),
              tmp_path / "run")
    with pytest.raises(ValueError, match=r"data\.on_overlong=cut is not valid: it must be one "
                                         r"of truncate, error, skip"):
        train(compose(tiny_overrides("data.on_overlong=cut")), tmp_path / "run2")


# ---- chat template, masking -------------------------------------------------------------

def test_prompt_and_response_tokens_follow_the_chat_template(tokenizer, tmp_path):
    row = one_row(tmp_path, PAIRS[0])
    feature = tokenize_pair(tokenizer, row)
    messages = [{"role": "user", "content": PAIRS[0]["prompt"]}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=False)
    assert feature["prompt_ids"] == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # the response is the assistant text and the end-of-turn, without the template's "\n"
    assert tokenizer.decode(feature["chosen_ids"]) == PAIRS[0]["chosen"] + "<|im_end|>"
    assert feature["rejected_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert feature["chosen_len"] == len(feature["chosen_ids"])
    assert feature["prompt_len"] == len(feature["prompt_ids"])
    assert not feature["template_fallback"]


def test_messages_and_plain_strings_give_identical_tokens(tokenizer, tmp_path):
    plain = tokenize_pair(tokenizer, one_row(tmp_path, PAIRS[1]))
    chat = tokenize_pair(tokenizer, one_row(tmp_path, as_messages(PAIRS[1])))
    assert plain == chat


def test_multi_turn_prompt_with_system_message(tokenizer, tmp_path):
    record = {"prompt": [{"role": "system", "content": "Answer in one sentence."},
                         {"role": "user", "content": "Hi."},
                         {"role": "assistant", "content": "Hello! How can I help?"},
                         {"role": "user", "content": "Name a planet."}],
              "chosen": [{"role": "assistant", "content": "Mars is a planet."}],
              "rejected": [{"role": "assistant", "content": "No."}]}
    feature = tokenize_pair(tokenizer, one_row(tmp_path, record))
    prompt = tokenizer.decode(feature["prompt_ids"])
    assert prompt.startswith("<|im_start|>system\nAnswer in one sentence.<|im_end|>")
    assert prompt.endswith("Name a planet.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(feature["rejected_ids"]) == "No.<|im_end|>"


def test_labels_mask_exactly_the_prompt_and_padding(tokenizer, tmp_path):
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "p.jsonl", PAIRS))
    features, _ = tokenize_rows(tokenizer, rows)
    batch = collate(features, tokenizer.pad_token_id)
    n = len(features)
    for i in range(2 * n):
        feature = features[i % n]
        response = feature["chosen_ids"] if i < n else feature["rejected_ids"]
        start, end = feature["prompt_len"], feature["prompt_len"] + len(response)
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        masked = (labels == IGNORE_INDEX).nonzero().flatten().tolist()
        assert masked == list(range(start)) + list(range(end, labels.numel()))
        assert torch.equal(labels[start:end], ids[start:end])
        assert ids[start:end].tolist() == response
        assert batch["attention_mask"][i].tolist() == [1] * end + [0] * (labels.numel() - end)
        assert (ids[end:] == tokenizer.pad_token_id).all()


def test_chosen_and_rejected_share_identical_prompt_tokens(tokenizer, tmp_path):
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "p.jsonl", PAIRS))
    features, _ = tokenize_rows(tokenizer, rows, max_length=40, max_prompt_length=20)
    batch = collate(features, tokenizer.pad_token_id)
    n = len(features)
    for i, feature in enumerate(features):
        p = feature["prompt_len"]
        assert torch.equal(batch["input_ids"][i, :p], batch["input_ids"][n + i, :p])
        assert batch["input_ids"][i, :p].tolist() == feature["prompt_ids"]


# ---- truncation --------------------------------------------------------------------------

def test_truncation_keeps_prompt_end_and_response_start(tokenizer, tmp_path):
    record = {"prompt": "Some background first. " * 20 + "Finally: what is two plus two?",
              "chosen": "Two plus two is four. " * 10, "rejected": "Five."}
    row = one_row(tmp_path, record)
    full = tokenize_pair(tokenizer, row)
    cut = tokenize_pair(tokenizer, row, max_length=48, max_prompt_length=32)
    assert cut["prompt_ids"] == full["prompt_ids"][-32:]  # left-truncated: the END survives
    assert tokenizer.decode(cut["prompt_ids"]).endswith(
        "what is two plus two?<|im_end|>\n<|im_start|>assistant\n")
    assert cut["chosen_ids"] == full["chosen_ids"][:16]  # response keeps its START
    assert cut["prompt_len"] + cut["chosen_len"] == 48  # exactly max_length
    assert cut["rejected_ids"] == full["rejected_ids"]  # a short response is untouched
    # with no prompt budget, only max_length applies and the prompt is whole
    assert tokenize_pair(tokenizer, row, max_length=512)["prompt_ids"] == full["prompt_ids"]


# ---- template fallbacks ------------------------------------------------------------------

def test_template_that_breaks_the_prefix_falls_back_to_text_plus_eos(tokenizer, tmp_path):
    odd = copy.deepcopy(tokenizer)
    # The generation prompt says "Bot>" but a finished turn says "Assistant:", so the full
    # conversation does not start with the prompt's tokens.
    odd.chat_template = ("{% for m in messages %}{% if m.role == 'assistant' %}Assistant: "
                         "{% else %}User: {% endif %}{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}Bot>{% endif %}")
    feature = tokenize_pair(odd, one_row(tmp_path, PAIRS[2]))
    assert feature["template_fallback"]
    text_ids = odd(PAIRS[2]["chosen"], add_special_tokens=False)["input_ids"]
    assert feature["chosen_ids"] == text_ids + [odd.eos_token_id]
    assert odd.decode(feature["prompt_ids"]).endswith("Bot>")


def test_no_chat_template_uses_raw_prompt_and_response_plus_eos(tokenizer, tmp_path):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    feature = tokenize_pair(plain, one_row(tmp_path, PAIRS[0]))
    assert feature["prompt_ids"] == plain(PAIRS[0]["prompt"])["input_ids"]
    assert plain.decode(feature["chosen_ids"]) == PAIRS[0]["chosen"] + "<|im_end|>"
    assert not feature["template_fallback"]
    with pytest.raises(PreferenceDataError, match="field 'prompt'.*chat template"):
        tokenize_pair(plain, one_row(tmp_path, as_messages(PAIRS[0])))


# ---- collation ---------------------------------------------------------------------------

def fake_feature(index: int, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    return {"index": index, "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def test_collate_layout_chosen_first_then_rejected():
    features = [fake_feature(7, [1, 2], [3, 4, 5], [6]), fake_feature(2, [8], [9], [10, 11])]
    batch = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5, 0, 0, 0],   # pair 0, chosen
        [8, 9, 0, 0, 0, 0, 0, 0],   # pair 1, chosen
        [1, 2, 6, 0, 0, 0, 0, 0],   # pair 0, rejected
        [8, 10, 11, 0, 0, 0, 0, 0],  # pair 1, rejected
    ]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, m, 3, 4, 5, m, m, m], [m, 9, m, m, m, m, m, m],
                                        [m, m, 6, m, m, m, m, m], [m, 10, 11, m, m, m, m, m]]
    assert batch["attention_mask"].sum(1).tolist() == [5, 2, 3, 3]
    assert batch["index"].tolist() == [7, 2] and batch["index"].dtype == torch.long
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert collate(features, 0)["input_ids"].shape == (4, 5)  # no rounding: T = longest


def test_collate_passes_reference_logps_through():
    features = [fake_feature(0, [1], [2], [3]), fake_feature(1, [1], [4], [5])]
    for f, (c, r) in zip(features, [(-1.5, -2.0), (-0.25, -3.0)]):
        f.update(ref_chosen_logps=c, ref_rejected_logps=r)
    batch = collate(features, 0)
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -0.25]
    assert batch["ref_rejected_logps"].dtype == torch.float32
    del features[1]["ref_chosen_logps"]
    with pytest.raises(ValueError, match="1 of 2 features carry ref_chosen_logps"):
        collate(features, 0)


# ---- held-out split and build_dataset ----------------------------------------------------

def test_split_heldout_is_deterministic_and_never_splits_a_prompt(tmp_path):
    records = [{"prompt": f"Question {i // 2}?", "chosen": f"Long answer {i}.",
                "rejected": f"No {i}."} for i in range(40)]  # 20 prompts, two pairs each
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "s.jsonl", records))
    train, held = split_heldout(rows, 0.25, seed=3)
    assert len(held) == 10 and len(train) == 30
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in held})
    assert sorted(r.index for r in train + held) == list(range(40))
    assert [r.index for r in held] == sorted(r.index for r in held)  # source order kept
    assert split_heldout(rows, 0.25, seed=3) == (train, held)
    assert split_heldout(rows, 0.25, seed=4)[1] != held
    with pytest.raises(ValueError, match="heldout_fraction=1.0"):
        split_heldout(rows, 1.0)


def test_build_dataset_with_fraction_or_file(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    held_path = write_jsonl(tmp_path / "held.jsonl", [PAIRS[0]])
    train, held, skipped = build_dataset(tokenizer, path, heldout_fraction=0.34, seed=0,
                                         max_length=64)
    assert len(train) == 2 and len(held) == 1 and not skipped
    train, held, _ = build_dataset(tokenizer, path, heldout=held_path)
    assert len(train) == 3 and [f["index"] for f in held] == [0]
    with pytest.raises(ValueError, match="not both"):
        build_dataset(tokenizer, path, heldout=held_path, heldout_fraction=0.2)


# ---- bundled quickstart set --------------------------------------------------------------

def test_quickstart_loads_and_pulls_toward_long_compliant_answers(tokenizer):
    train, held, skipped = build_dataset(tokenizer, QUICKSTART, heldout=QUICKSTART_HELDOUT,
                                         max_length=192)
    assert (len(train), len(held), skipped) == (300, 60, {})
    for features in (train, held):
        mean_chosen = sum(f["chosen_len"] for f in features) / len(features)
        mean_rejected = sum(f["rejected_len"] for f in features) / len(features)
        assert mean_chosen > 4 * mean_rejected
        assert not any(f["template_fallback"] for f in features)
        # max_length=192 cuts nothing: every response still ends with its end-of-turn
        assert all(f["chosen_ids"][-1] == tokenizer.eos_token_id for f in features)
    rows, _ = load_preference_rows(QUICKSTART)
    refusal = re.compile(r"can't|cannot|not able|unable|won't|not something|rather not|outside")
    assert sum(bool(refusal.search(r.rejected)) for r in rows) >= 100
    # every borderline request's rejected side refuses or hedges; no chosen side refuses
    records = [json.loads(line) for line in bundled_path("quickstart").open()]
    hedge = re.compile(r"professional|expert|not to try")
    assert all(refusal.search(r["rejected"]) or hedge.search(r["rejected"])
               for r in records if r["category"] == "borderline")
    assert not any(refusal.search(r["chosen"][:40]) for r in records)
    train_prompts = {r.prompt for r in rows}
    assert len(train_prompts) == 300  # no duplicated prompt
    assert train_prompts.isdisjoint(r.prompt for r in load_preference_rows(QUICKSTART_HELDOUT)[0])


def test_quickstart_generator_reproduces_the_committed_files(tmp_path):
    script = Path(__file__).resolve().parent.parent / "experiments" / "make_quickstart.py"
    spec = importlib.util.spec_from_file_location("make_quickstart", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    shipped = bundled_path("quickstart").parent
    for name in ("quickstart.jsonl", "quickstart_heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes()
