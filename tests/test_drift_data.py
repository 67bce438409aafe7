"""The drift scenarios of issue #34 (experiments/make_drift_pairs.py, card
experiments/data/drift/README.md): reproducible byte for byte, the sizes the cards state, held-out
topics disjoint from training, and the two confounds as strong as the cards say.

Each held-out split is the 60 rows of its 12 selection-rule topics (three in every thirteen of
the first 52), then 140 rows of 28 held-out-only topics added later; the first 60 rows are
unchanged since ``ORIGINAL``, so results measured on them stay reproducible.

Thresholds, each from the construction and checked against the committed files:
- length_bias: exactly 30 of 200 training pairs (30 of 200 held out: 9 of the first 60, 21 of
  the rest) prefer the concise answer (``CONCISE_CHOSEN_SHARE`` = 0.15, rounded per split), so
  the share of pairs whose chosen answer has more words is 0.85; the test asks for [0.8, 0.9]. A
  padded answer is its concise answer plus five padding sentences of 8-17 words each: measured on
  the training split, the chosen answers of those pairs average 98 words against 30 (3.27x), and
  the test asks for >= 3x.
- length_bias against experiment=drift_length: epsilon 64 tokens must sit above every concise
  answer and below every padded one (measured on the training split and the first 60 held-out
  rows: concise 31-47 tokens, + EOS, padded 91-144), the training bound epsilon - margin above
  the concise answers' mean (36.8 + EOS, same rows), and the 160-token budget above every padded
  answer, so a drift to the padded style is measured, not capped.
- crude_voice, scored by `ProfanityCheckScorer`, the callable `Toxicity(scorer="profanity_check")`
  applies to responses: measured on the training split and the first 60 held-out rows, the chosen
  answers average 0.95 (min 0.57) and the rejected ones 0.02 (max 0.11). The test asks for chosen
  >= 0.5, rejected <= 0.1, at least 90% of chosen answers above 0.5 and no rejected one.

"Disjoint" is the held-out sets' rule (`tests/test_heldout_sets.py`): on lowercased text with
punctuation stripped, no prompt in both splits and no 8-word run shared between them; and no
held-out topic's own text (phrasings and answers) shares an 8-word run with a training topic's.
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pdalign.contract.prompts import bundled_prompt_sets, bundled_prompts_dir, load_prompts
from tests.conftest import compose, git_show_or_skip

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "make_drift_pairs.py"
DATA = ROOT / "experiments" / "data" / "drift"
SCENARIOS = ("length_bias", "crude_voice")
SPLITS = {"": 200, "_heldout": 200}
FIRST_HELDOUT_ROWS = 60  # the held-out rows of the selection rule, before the held-out-only topics
ORIGINAL = "2c8b811"     # the commit whose held-out splits had only those 60 rows
NGRAM = 8


def script():
    """experiments/make_drift_pairs.py as a module (stdlib only; main() is not run)."""
    spec = importlib.util.spec_from_file_location("make_drift_pairs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(
        encoding="utf-8").splitlines()]


def words(text: str) -> list[str]:
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^\w\s]", " ", text).split()


def ngrams(text: str) -> set[tuple[str, ...]]:
    t = words(text)
    return {tuple(t[i:i + NGRAM]) for i in range(len(t) - NGRAM + 1)}


# ---- the files ---------------------------------------------------------------------------------

def test_script_rebuilds_the_committed_files_byte_for_byte(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "pairs"),
                           "--prompts-out", str(tmp_path / "prompts")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in (s + suffix for s in SCENARIOS for suffix in SPLITS):
        pairs = (tmp_path / "pairs" / f"{name}.jsonl").read_bytes()
        assert pairs == (DATA / f"{name}.jsonl").read_bytes(), f"{name}: pairs differ"
        prompts = (tmp_path / "prompts" / f"{name}.jsonl").read_bytes()
        assert prompts == (bundled_prompts_dir() / f"{name}.jsonl").read_bytes(), (
            f"{name}: prompt set differs")
    start = "length_concise_start.jsonl"
    assert (tmp_path / "pairs" / start).read_bytes() == (DATA / start).read_bytes()


def test_another_seed_draws_other_rows(tmp_path):
    """The seed is live: a different one gives different files (so the byte check above tests
    the default seed, not a seed-free script)."""
    subprocess.run([sys.executable, str(SCRIPT), "--seed", "35", "--out", str(tmp_path),
                    "--prompts-out", str(tmp_path)], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "length_bias.jsonl").read_bytes() != (
        DATA / "length_bias.jsonl").read_bytes()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sizes_fields_and_prompt_sets(scenario):
    for suffix, size in SPLITS.items():
        name = scenario + suffix
        data = rows(name)
        assert len(data) == size, f"{name}: {len(data)} pairs"
        for row in data:
            assert {"prompt", "chosen", "rejected", "scenario", "category", "topic"} == set(row)
            assert row["scenario"] == scenario and row["chosen"] != row["rejected"]
        prompts = [row["prompt"] for row in data]
        assert len(set(prompts)) == size, f"{name}: a prompt repeats"
        # the sampled constraint's prompt set is the split's prompts, in the same order
        assert load_prompts(name) == prompts
        card = (bundled_prompts_dir() / f"{name}.md").read_text(encoding="utf-8")
        assert f"**Size.** {size} rows" in card


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_heldout_topics_and_prompts_are_disjoint_from_training(scenario):
    train, heldout = rows(scenario), rows(f"{scenario}_heldout")
    assert not {r["topic"] for r in train} & {r["topic"] for r in heldout}
    assert len({r["topic"] for r in train}) == 40 and len({r["topic"] for r in heldout}) == 40
    # the first 60 held-out rows are the 12 selection-rule topics, the rest the 28 held-out-only
    first = {r["topic"] for r in heldout[:FIRST_HELDOUT_ROWS]}
    rest = {r["topic"] for r in heldout[FIRST_HELDOUT_ROWS:]}
    assert len(first) == 12 and len(rest) == 28 and not first & rest
    seen = {" ".join(words(r["prompt"])) for r in train}
    grams = set().union(*(ngrams(r["prompt"]) for r in train))
    for r in heldout:
        assert " ".join(words(r["prompt"])) not in seen, r["prompt"]
        shared = ngrams(r["prompt"]) & grams
        assert not shared, f"{r['prompt']!r} shares {' '.join(sorted(shared)[0])!r} with training"
    # no held-out answer is trained on either (off-topic rejections come from the same split)
    train_answers = {r[k] for r in train for k in ("chosen", "rejected")}
    assert not train_answers & {r[k] for r in heldout for k in ("chosen", "rejected")}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_heldout_topics_share_no_answer_or_8gram_with_training_topics(scenario):
    """Each held-out topic's own text (its phrasings and answers, before any padding, framing,
    opener or closer, which every split shares by design) shares no answer and no 8-word run
    with a training topic's; every slug is unique across the main and held-out-only lists."""
    module = script()
    topics, extra = {"length_bias": (module.LENGTH_TOPICS, module.LENGTH_HELDOUT_TOPICS),
                     "crude_voice": (module.CRUDE_TOPICS, module.CRUDE_HELDOUT_TOPICS)}[scenario]
    train, heldout = module.split_topics(topics)
    heldout = heldout + extra

    def texts(topic: tuple) -> list[str]:  # the phrasings, then every other field but the slug
        return list(topic[1]) + list(topic[2:])

    assert len({t[0] for t in topics + extra}) == len(topics) + len(extra)
    train_texts = {t for topic in train for t in texts(topic)}
    grams: dict[tuple[str, ...], str] = {}
    for topic in train:
        for text in texts(topic):
            for g in ngrams(text):
                grams.setdefault(g, topic[0])
    for topic in heldout:
        for text in texts(topic):
            assert text not in train_texts, (topic[0], text)
            shared = sorted(g for g in ngrams(text) if g in grams)
            assert not shared, (f"{topic[0]}: {' '.join(shared[0])!r} is also in the training "
                                f"topic {grams[shared[0]]}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_heldout_split_starts_with_its_original_rows(scenario):
    """The first 60 held-out rows (pairs and prompt set) are the split as it stood at ORIGINAL,
    before the held-out-only topics, so results measured on them stay reproducible."""
    for relpath in (f"experiments/data/drift/{scenario}_heldout.jsonl",
                    f"constraints/prompts/{scenario}_heldout.jsonl"):
        original = git_show_or_skip(ROOT, ORIGINAL, relpath).splitlines()
        now = (ROOT / relpath).read_text(encoding="utf-8").splitlines()
        assert len(original) == FIRST_HELDOUT_ROWS, f"{ORIGINAL} has {len(original)} rows"
        assert now[:FIRST_HELDOUT_ROWS] == original, f"{relpath}: the first 60 rows changed"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_prompt_is_in_another_bundled_prompt_set(scenario):
    """Exact match after lowercasing and collapsing whitespace, the rule of
    tests/test_constraints.py for the bundled sets."""
    ours = {f"{s}{suffix}" for s in SCENARIOS for suffix in SPLITS}
    others = {" ".join(p.lower().split()): name for name in bundled_prompt_sets()
              if name not in ours for p in load_prompts(name)}
    assert len(others) > 1000  # the other bundled sets were read
    for suffix in SPLITS:
        for prompt in load_prompts(scenario + suffix):
            hit = others.get(" ".join(prompt.lower().split()))
            assert hit is None, f"{prompt!r} is also in {hit}"


# ---- the length confound -----------------------------------------------------------------------

@pytest.mark.parametrize("suffix", list(SPLITS))
def test_length_bias_prefers_the_longer_answer_far_more_than_quality_explains(suffix):
    data = rows(f"length_bias{suffix}")
    longer = [r for r in data if len(r["chosen"].split()) > len(r["rejected"].split())]
    share = len(longer) / len(data)
    assert 0.8 <= share <= 0.9, share
    chosen = statistics.mean(len(r["chosen"].split()) for r in longer)
    rejected = statistics.mean(len(r["rejected"].split()) for r in longer)
    assert chosen >= 3 * rejected, (chosen, rejected)
    # the rest prefer the concise answer to a padded one that is wrong or off-topic
    rest = [r for r in data if r not in longer]
    assert {r["category"] for r in rest} <= {"concise_chosen_over_padded_wrong",
                                             "concise_chosen_over_padded_off_topic"}
    assert all(len(r["rejected"].split()) >= 2 * len(r["chosen"].split()) for r in rest)
    # a padded chosen answer holds its concise rejected answer word for word
    assert all(r["rejected"] in r["chosen"] for r in longer)


def test_concise_start_prefers_the_concise_answer_on_every_training_pair():
    """experiment=drift_length_start's pairs: the length_bias training pairs, in order, with the
    padded-chosen ones swapped, so the start learns brevity from the training prompts only."""
    train, start = rows("length_bias"), rows("length_concise_start")
    assert [r["prompt"] for r in start] == [r["prompt"] for r in train]
    for old, new in zip(train, start):
        assert {new["chosen"], new["rejected"]} == {old["chosen"], old["rejected"]}
        assert len(new["chosen"].split()) * 2 <= len(new["rejected"].split()), new["topic"]
        assert new["category"] == f"concise_start/{old['category']}"
    swapped = sum(new["chosen"] != old["chosen"] for old, new in zip(train, start))
    assert swapped == sum(r["category"] == "padded_chosen" for r in train) == 170
    from pdalign.training.build import build_constraints
    from pdalign.training.config import check_config

    cfg = compose(["experiment=drift_length_start"])
    check_config(cfg)
    assert (ROOT / cfg.data.train).resolve() == (DATA / "length_concise_start.jsonl").resolve()
    assert cfg.method.objective == "orpo" and not cfg.method.constrained
    (length,) = build_constraints(cfg)  # measured only; its bound checked against both budgets
    sweep = compose(["experiment=drift_length"])
    assert (length.epsilon, cfg.eval.max_new_tokens, cfg.eval.prompts_per_set) == (
        sweep.constraints.length.epsilon, sweep.eval.max_new_tokens, sweep.eval.prompts_per_set)


def test_length_epsilon_sits_between_the_answers_and_below_the_budget(tokenizer):
    cfg = compose(["experiment=drift_length"])
    eps = float(cfg.constraints.length.epsilon)
    budget = int(cfg.train.rollout.max_new_tokens)
    assert budget == int(cfg.eval.max_new_tokens)
    concise, padded = [], []
    for suffix in SPLITS:
        for r in rows(f"length_bias{suffix}"):
            long_side = "chosen" if r["category"] == "padded_chosen" else "rejected"
            short_side = "rejected" if long_side == "chosen" else "chosen"
            padded.append(len(tokenizer(r[long_side], add_special_tokens=False)["input_ids"]))
            concise.append(len(tokenizer(r[short_side], add_special_tokens=False)["input_ids"]))
    # + 1: the Length constraint counts the EOS token of a response that stops. It bounds the
    # mean: the concise answers' mean fits the training bound eps - margin, every concise answer
    # fits eps, and every padded answer exceeds it
    assert statistics.mean(concise) + 1 < eps - float(cfg.constraints.length.margin)
    assert max(concise) + 1 < eps < min(padded)
    assert max(padded) + 1 < budget
    assert statistics.mean(padded) >= 3 * statistics.mean(concise)


@pytest.mark.parametrize("experiment,scenario", [("drift_length", "length_bias"),
                                                 ("drift_toxicity", "crude_voice")])
def test_every_pair_fits_the_experiment_max_length_untruncated(experiment, scenario, tokenizer):
    from pdalign.data.features import tokenize_pair
    from pdalign.data.preference import load_preference_rows

    cfg = compose([f"experiment={experiment}"])
    for path in (cfg.data.train, cfg.data.heldout):
        pairs, _ = load_preference_rows(str(ROOT / path))
        for row in pairs:
            feature = tokenize_pair(tokenizer, row, cfg.data.max_length,
                                    cfg.data.max_prompt_length, "error")
            assert not feature["truncated"]


# ---- the toxicity confound ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def profanity():
    pytest.importorskip("profanity_check")
    from pdalign.constraints.toxicity import ProfanityCheckScorer

    return ProfanityCheckScorer()


@pytest.mark.parametrize("suffix", list(SPLITS))
def test_crude_voice_chosen_answers_score_toxic_and_rejected_do_not(suffix, profanity):
    data = rows(f"crude_voice{suffix}")
    chosen = profanity([r["chosen"] for r in data])
    rejected = profanity([r["rejected"] for r in data])
    assert statistics.mean(chosen) >= 0.5, statistics.mean(chosen)
    assert statistics.mean(rejected) <= 0.1, statistics.mean(rejected)
    assert sum(s > 0.5 for s in chosen) >= 0.9 * len(data)
    assert max(rejected) <= 0.5


def test_crude_voice_has_no_slurs_threats_or_group_targets():
    """Crude, not hateful: none of these words appear in any answer (a spot check of the
    writing rule in the card; the scorer would not catch a polite slur)."""
    banned = {"kill you", "hurt you", "retard", "gay", "fag", "women are", "men are", "race",
              "religion", "muslim", "jew", "christian", "immigrant", "black people",
              "white people"}
    for suffix in SPLITS:
        for r in rows(f"crude_voice{suffix}"):
            text = f" {r['chosen']} {r['rejected']} ".lower()
            assert not [w for w in banned if re.search(rf"\b{w}\b", text)], r["chosen"]


# ---- the experiments ---------------------------------------------------------------------------

@pytest.mark.parametrize("experiment,constraint,scenario", [
    ("drift_length", "length", "length_bias"), ("drift_toxicity", "toxicity", "crude_voice")])
def test_experiment_trains_on_the_scenario_and_judges_on_its_heldout_prompts(
        experiment, constraint, scenario):
    from pdalign.evaluation.heldout import heldout_prompt_sets
    from pdalign.training.build import build_constraints
    from pdalign.training.config import check_config

    cfg = compose([f"experiment={experiment}"])
    check_config(cfg)
    assert set(cfg.constraints) == {constraint, "kl_budget"}
    assert (ROOT / cfg.data.train).resolve() == (DATA / f"{scenario}.jsonl").resolve()
    assert (ROOT / cfg.data.heldout).resolve() == (DATA / f"{scenario}_heldout.jsonl").resolve()
    built = {c.name: c for c in build_constraints(cfg)}  # also checks epsilon against both budgets
    sets = heldout_prompt_sets(built[constraint])
    assert sets == {"id": ((bundled_prompts_dir() / f"{scenario}_heldout.jsonl").resolve(), True)}
