"""Write the bundled constraint pair sets: constraints/pairs/{refusal,over_refusal}_pairs.jsonl.

Run from the repository root (stdlib only, deterministic):

    python experiments/make_safety_pairs.py

- ``refusal_pairs``: every prompt of the bundled ``adversarial`` set (the refusal constraint's
  training prompts) x (a refusal that names the request, preferred to a compliance opener);
- ``over_refusal_pairs``: every prompt of the bundled ``benign`` set (look-alikes: "kill a
  Python process") x (a helpful opener that restates the request, preferred to a refusal).

Each answer restates its own prompt, so no two pairs share an answer, and the refusals are in
the plain style of instruction-tuned chat models ("I'm sorry, but I can't ..."), the phrases the
bundled `PhraseRefusalDetector` counts. The compliance openers promise steps and stop there:
no pair holds harmful instructions. The held-out sets (``adversarial_heldout``,
``adversarial_shifted``, ``benign_heldout``) are never used here. Cards:
constraints/pairs/*.md.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "constraints" / "prompts"
OUT = ROOT / "constraints" / "pairs"
SEED = 20261130

# (pattern on the prompt, how a refusal names it, how a compliance opener names it); the
# first group is the request with the asker's pronouns turned to the answerer's.
FORMS = [
    (r"^(?:how do i|how can i|how would i|how should i|how to) (.+?)\??$",
     "explain how to {x}", "Here's how to {x}"),
    (r"^(?:explain|describe|tell me|show me) how to (.+?)[.?]?$", "explain how to {x}",
     "Here's how to {x}"),
    (r"^what(?:'s| is) the (?:best|easiest|fastest|safest|cheapest) way to (.+?)\??$",
     "help with the best way to {x}", "The best way to {x} is this"),
    (r"^(?:write|draft|compose|create) (.+?)[.?]?$", "write {x}", "Here is {x}"),
    (r"^give me (.+?)[.?]?$", "give you {x}", "Here are {x}"),
    (r"^help me (.+?)[.?]?$", "help you {x}", "Here's how to {x}"),
    (r"^tell me (.+?)[.?]?$", "tell you {x}", "Here's {x}"),
]
PRONOUNS = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
            "i'm": "you're", "i've": "you've", "i'd": "you'd", "am": "are"}

REFUSAL_OPENERS = ["I'm sorry, but I can't {act}.", "I can't {act}.",
                   "Sorry, but I can't {act}.", "I'm sorry, I can't {act}."]
REFUSAL_REASONS = ["It could seriously hurt people.", "That could cause real harm to others.",
                   "It would put other people at risk and is likely illegal.",
                   "Helping with this could lead to someone getting hurt."]
REFUSAL_OFFERS = ["If something difficult is going on, I'm happy to talk about safe, legal "
                  "options.", "I'm glad to help with something else.",
                  "If you're researching this topic for safety reasons, I can point you to "
                  "general, reputable resources.",
                  "If you're worried about your own safety, please contact local support "
                  "services."]
HARMFUL_FOLLOW = ["Step 1:", "First, you'll need to", "Start by", "The first thing to do is"]
BENIGN_FOLLOW = ["Step 1:", "First,", "Start by", "The key idea is", "Here is what to do:"]
BENIGN_REFUSALS = ["I'm sorry, but I can't {act}.", "I can't {act}.",
                   "Sorry, I can't {act}; it isn't something I can help with.",
                   "I'm sorry, I can't help with that request."]


def _second_person(text: str) -> str:
    return re.sub(r"\b(?:i'm|i've|i'd|i|me|my|mine|myself|am)\b",
                  lambda m: PRONOUNS[m.group(0).lower()], text, flags=re.IGNORECASE)


def restate(prompt: str) -> tuple[str, str]:
    """(what a refusal says it can't do, how a compliance opener names the request)."""
    text = " ".join(prompt.strip().split())
    for pattern, refuse, comply in FORMS:
        if m := re.match(pattern, text, flags=re.IGNORECASE):
            x = _second_person(m.group(1).rstrip(".?! "))
            return refuse.format(x=x), comply.format(x=x)
    return "help with that request", "I can help with that"


def pair_rows(prompts: list[str], wanted: str, rng: random.Random) -> list[dict]:
    """One pair per prompt. ``wanted``: ``refuse`` (harmful prompts: refusal > compliance) or
    ``comply`` (benign prompts: helpful opener > refusal)."""
    rows = []
    for prompt in prompts:
        act, named = restate(prompt)
        if wanted == "refuse":
            refusal = " ".join([rng.choice(REFUSAL_OPENERS).format(act=act),
                                rng.choice(REFUSAL_REASONS), rng.choice(REFUSAL_OFFERS)])
            comply = f"Sure! {named}. {rng.choice(HARMFUL_FOLLOW)}"
            rows.append({"prompt": prompt, "chosen": refusal, "rejected": comply})
        else:
            helpful = f"Sure! {named}. {rng.choice(BENIGN_FOLLOW)}"
            refusal = rng.choice(BENIGN_REFUSALS).format(act=act)
            rows.append({"prompt": prompt, "chosen": helpful, "rejected": refusal})
    return rows


def main(out_dir: Path = OUT) -> None:
    rng = random.Random(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, source, wanted in (("refusal_pairs", "adversarial", "refuse"),
                                 ("over_refusal_pairs", "benign", "comply")):
        prompts = [json.loads(line)["prompt"]
                   for line in (PROMPTS / f"{source}.jsonl").read_text().splitlines() if line]
        rows = pair_rows(prompts, wanted, rng)
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} pairs to {out_dir / name}.jsonl")


if __name__ == "__main__":
    main()
