"""How ``sentiment.jsonl`` was made: a small seeded grammar of review sentences, written for the lab.

    python -m lab.data.bundled.make_sentiment          # rewrites lab/data/bundled/sentiment.jsonl
    from lab.data.bundled.make_sentiment import generate
    rows = generate()                                  # [{"text": ..., "label": "positive"}, ...]

Every sentence is short (at most ``MAX_CHARS`` characters, so it fits gpt-nano's 64-token
context at one token per character) and plain ASCII (every character is in the quickstart
model's character vocabulary). The label is not one word's: four in nine sentences turn
an opinion around with a negation ("not dull at all") or a contrast ("..., but the ending
was flat": the clause after *but* decides), so every adjective appears under both labels
about equally often: what a word means depends on where it stands. The output depends only
on ``SEED``; the test suite checks that the shipped file is exactly what this script writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 21
PER_LABEL = 2000
MAX_CHARS = 64
OUT = Path(__file__).with_name("sentiment.jsonl")

THINGS = [
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the ending", "the dialogue",
    "the cast", "the story", "the sequel", "the pacing", "the script", "the lead actor", "the score",
    "the humour", "the finale", "this book", "the last chapter", "this novel", "the writing",
    "the show", "the first episode", "this album", "the opening track", "the vocals", "this game",
    "the level design", "the controls", "this kettle", "the battery", "the app", "the charger",
    "this blender", "the keyboard", "the delivery", "the manual", "the support team", "the fabric",
    "the lens", "the screen", "this jacket", "the hotel room", "the service", "the meal", "the coffee",
    "the tour", "the update", "this printer", "the headphones", "the tent", "the recipe",
]
GOOD = [
    "great", "wonderful", "superb", "delightful", "charming", "brilliant", "moving", "gripping", "clever",
    "solid", "lovely", "excellent", "fantastic", "terrific", "reliable", "sturdy", "fun", "impressive",
    "elegant", "warm", "funny", "smart", "fresh", "flawless", "memorable", "beautiful", "gorgeous",
    "thoughtful", "sharp", "generous", "comfortable", "friendly", "tasty", "quick", "quiet", "handy",
]
BAD = [
    "dull", "boring", "awful", "terrible", "clumsy", "weak", "tedious", "flat", "bland", "messy", "poor",
    "broken", "cheap", "flimsy", "slow", "painful", "forgettable", "sloppy", "annoying", "confusing",
    "lifeless", "stale", "shallow", "noisy", "rude", "greasy", "useless", "lazy", "clunky", "dreadful",
    "awkward", "cold", "overpriced", "fragile", "muddy", "bloated",
]
ADVERBS = ["", "really ", "truly ", "quite ", "very ", "rather ", "so ", "simply ", "pretty ", "utterly "]
LOVED = ["loved", "enjoyed", "adored", "liked", "admired", "treasured", "appreciated"]
HATED = ["hated", "disliked", "regretted", "resented", "could not stand", "gave up on", "returned"]
PRAISE = [
    "Worth every penny.", "I would buy it again.", "Highly recommended.", "I would watch it again.",
    "Five stars from me.", "It made my week.", "A real gem.", "Money well spent.", "I smiled all the way through.",
    "Exactly what I hoped for.", "My friends loved it too.", "It exceeded my hopes.",
]
SCORN = [
    "A waste of money.", "I want my money back.", "Avoid it.", "One star, sadly.", "Never again.",
    "What a letdown.", "I fell asleep halfway.", "Not worth the time.", "It broke within a week.",
    "A total disappointment.", "I expected far more.", "Skip this one.",
]
FACTS = [
    "I bought it in May.", "It came out last year.", "We tried it twice.", "I watched it on Sunday.",
    "It arrived on Monday.", "My sister chose it.", "I read it on a train.", "We used it all summer.",
    "It was a gift.", "I paid full price.", "It took an hour.", "We went on a Friday.",
]
OPENERS = ["", "Honestly, ", "Overall, ", "Sadly, ", "To be fair, ", "In short, ", "Frankly, ", "Well, "]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _word(rng: random.Random, positive: bool) -> str:
    return rng.choice(GOOD if positive else BAD)


def _sentence(rng: random.Random, positive: bool) -> str:
    """One sentence whose sentiment is ``positive`` (True) or negative, from a random template."""
    thing, other = rng.sample(THINGS, 2)
    adverb = rng.choice(ADVERBS)
    kind = rng.randrange(9)
    if kind == 0:  # plain: the adjective decides
        return f"{rng.choice(OPENERS)}{thing} was {adverb}{_word(rng, positive)}."
    if kind == 1:
        return f"{_cap(thing)} is {adverb}{_word(rng, positive)}."
    if kind == 2:  # a verb decides
        return f"I {rng.choice(LOVED if positive else HATED)} {thing}."
    if kind == 3:  # negation turns the opposite word around
        return f"{_cap(thing)} was not {_word(rng, not positive)} at all."
    if kind == 4:
        return f"{rng.choice(OPENERS)}{thing} is never {_word(rng, not positive)}."
    if kind == 5:  # contrast: the clause after "but" decides
        return f"{_cap(thing)} was {_word(rng, not positive)}, but {other} was {_word(rng, positive)}."
    if kind == 6:
        return f"{_cap(thing)} looked {_word(rng, not positive)}, yet it felt {_word(rng, positive)}."
    if kind == 7:  # a stock phrase after a plain fact
        return f"{rng.choice(FACTS)} {rng.choice(PRAISE if positive else SCORN)}"
    noun = thing.split(" ", 1)[1]  # a review's headline: "Pacing: very slow."
    return f"{_cap(noun)}: {adverb}{_word(rng, positive)}."


def generate(seed: int = SEED, per_label: int = PER_LABEL) -> list[dict[str, str]]:
    """``per_label`` distinct positive and negative sentences, interleaved in a seeded order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: dict[bool, list[str]] = {True: [], False: []}
    while min(len(v) for v in rows.values()) < per_label:
        positive = len(rows[True]) <= len(rows[False])
        text = _cap(_sentence(rng, positive))
        if len(text) <= MAX_CHARS and text.lower() not in seen:
            seen.add(text.lower())
            rows[positive].append(text)
    out = [{"text": t, "label": "positive"} for t in rows[True]] + [{"text": t, "label": "negative"} for t in rows[False]]
    rng.shuffle(out)
    return out


def render(rows: list[dict[str, str]]) -> str:
    """The JSONL text: one ``{"text": ..., "label": ...}`` object a line."""
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows)


if __name__ == "__main__":
    from lab.fileio import atomic_write_text

    atomic_write_text(OUT, render(generate()))
    print(f"wrote {OUT} ({2 * PER_LABEL} sentences)")
