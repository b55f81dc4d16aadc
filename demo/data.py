"""A small sentiment dataset of our own, generated from templates (no download, no licence question).

Used by `make run` (the offline demo) and by the tests as a learnable task.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the acting", "the plot", "the soundtrack", "the ending", "the cast",
            "the script", "the director's work", "the dialogue", "the camera work", "the story", "this sequel",
            "the pacing", "the lead performance", "the screenplay", "the special effects", "the characters"]
POSITIVE = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping", "excellent",
            "beautiful", "clever", "funny", "heartfelt", "stunning", "memorable", "engaging", "fantastic"]
NEGATIVE = ["dull", "boring", "clumsy", "awful", "tedious", "forgettable", "messy", "bland", "painful",
            "lifeless", "terrible", "shallow", "annoying", "predictable", "weak", "disappointing"]
ADVERBS = ["", "really ", "truly ", "quite ", "utterly ", "rather ", "simply ", "surprisingly "]
TEMPLATES = ["{s} was {a}{w}.", "I found {s} {a}{w}.", "{S} is {a}{w} from start to finish.",
             "Honestly, {s} felt {a}{w}.", "The whole experience was {w}; {s} was {a}{w}.",
             "Everyone said {s} would be {w}, and it was.", "{S}? {A}{w}."]
# Negations flip the label: the demo is not a bag-of-words task.
NEGATED = ["{S} was not {w} at all.", "I would never call {s} {w}.", "{S} is anything but {w}."]

VOCABULARY_WORDS = sorted({w for part in SUBJECTS + POSITIVE + NEGATIVE + ADVERBS + TEMPLATES + NEGATED
                           for w in part.replace("{", " ").replace("}", " ").replace("'", " ' ").split()})


def rows(n: int, seed: int, negation: bool = True) -> list[tuple[str, str]]:
    """n (text, label) rows, labels 'positive'/'negative', balanced, deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        positive = i % 2 == 0
        if negation and rng.random() < 0.2:
            words, template, label_positive = (NEGATIVE if positive else POSITIVE), rng.choice(NEGATED), positive
        else:
            words, template, label_positive = (POSITIVE if positive else NEGATIVE), rng.choice(TEMPLATES), positive
        s, a, w = rng.choice(SUBJECTS), rng.choice(ADVERBS), rng.choice(words)
        text = template.format(s=s, S=s[0].upper() + s[1:], a=a, A=(a[0].upper() + a[1:]) if a else "", w=w)
        text = text[0].upper() + text[1:]
        out.append((text, "positive" if label_positive else "negative"))
    rng.shuffle(out)
    return out


def write_csv(path: Path, data: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(data)
    return path


def write_dataset(folder: Path, train: int = 400, validation: int = 200, seed: int = 7,
                  negation: bool = True) -> Path:
    write_csv(folder / "train.csv", rows(train, seed, negation))
    write_csv(folder / "validation.csv", rows(validation, seed + 1, negation))
    return folder
