"""Writes golden_corpus.jsonl: the small synthetic corpus of the golden-loss test.

Documents are sentences over a fixed word list, with long-tailed lengths (most short, a few
long), so a batch mixes lengths the way real text does. The committed jsonl is what the test
reads; this script only records how it was made (python tests/assets/make_golden_corpus.py).
"""

import json
import random
from pathlib import Path

WORDS = (  # noqa: SIM905 - one readable string
    "the a one two group rank token state scan plan batch layer head query key value decay "
    "chunk stream document length short long model train step loss grad sum mean cost time "
    "memory node link send receive gather scatter split merge sort fit pack order"
).split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 4096)))
    return " ".join(words).capitalize() + rng.choice(".!?;.")


def main() -> None:
    rng = random.Random(20261126)
    lines = []
    for _ in range(320):
        target = int(min(6000, 30 * rng.paretovariate(0.9)))
        text = ""
        while len(text) < target:
            text += sentence(rng) + " "
        lines.append(json.dumps({"text": text.strip()}))
    Path(__file__).with_name("golden_corpus.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
