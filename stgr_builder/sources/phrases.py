"""Object phrases from a sentence, for the open-vocabulary detector: small and deterministic.

No tagger or model: a word is an object phrase when it (singularized) is in ``VISUAL_NOUNS``,
a vocabulary of things a detector can box (COCO and LVIS-style categories, people words and
the household objects of Charades). A colour or size word right before it is kept with it
("red car"). Phrases come in sentence order, each once. ``extra_nouns`` extends the vocabulary.

>>> object_phrases("A man in a red shirt rides a bicycle past two parked cars.")
['man', 'red shirt', 'bicycle', 'car']
>>> object_phrases("person turn a light on.")
['person', 'light']
"""

from __future__ import annotations

import re
from collections.abc import Iterable

VISUAL_NOUNS = frozenset(
    [
        "person",
        "man",
        "woman",
        "boy",
        "girl",
        "child",
        "kid",
        "baby",
        "people",
        "player",
        "men",
        "women",
        "lady",
        "guy",
        "crowd",
        "team",
        "rider",
        "cyclist",
        "driver",
        "dog",
        "cat",
        "horse",
        "bird",
        "cow",
        "sheep",
        "elephant",
        "bear",
        "zebra",
        "giraffe",
        "fish",
        "duck",
        "chicken",
        "goat",
        "pig",
        "rabbit",
        "monkey",
        "animal",
        "car",
        "bicycle",
        "bike",
        "motorcycle",
        "bus",
        "truck",
        "train",
        "boat",
        "airplane",
        "plane",
        "van",
        "taxi",
        "skateboard",
        "surfboard",
        "skis",
        "ski",
        "ball",
        "frisbee",
        "kite",
        "racket",
        "bat",
        "glove",
        "helmet",
        "net",
        "goal",
        "hoop",
        "basket",
        "chair",
        "table",
        "desk",
        "sofa",
        "couch",
        "bed",
        "door",
        "window",
        "shelf",
        "cabinet",
        "refrigerator",
        "fridge",
        "sink",
        "stove",
        "oven",
        "microwave",
        "laptop",
        "computer",
        "phone",
        "cellphone",
        "television",
        "tv",
        "screen",
        "remote",
        "keyboard",
        "mouse",
        "camera",
        "book",
        "paper",
        "notebook",
        "cup",
        "mug",
        "glass",
        "bottle",
        "bowl",
        "plate",
        "dish",
        "pan",
        "pot",
        "knife",
        "fork",
        "spoon",
        "food",
        "sandwich",
        "pizza",
        "cake",
        "apple",
        "banana",
        "bag",
        "backpack",
        "box",
        "blanket",
        "pillow",
        "towel",
        "broom",
        "vacuum",
        "mirror",
        "picture",
        "lamp",
        "light",
        "clothes",
        "shirt",
        "shoe",
        "shoes",
        "jacket",
        "hat",
        "coat",
        "dress",
        "sweater",
        "umbrella",
        "clock",
        "vase",
        "tree",
        "flower",
        "plant",
        "grass",
        "road",
        "street",
        "sidewalk",
        "building",
        "house",
        "fence",
        "bench",
        "sign",
        "stairs",
        "wall",
        "floor",
        "water",
        "pool",
        "river",
        "beach",
        "snow",
        "rope",
        "guitar",
        "piano",
        "drum",
        "microphone",
        "tool",
        "hammer",
        "brush",
        "bucket",
        "tire",
        "wheel",
    ]
)

_MODIFIERS = frozenset(
    [
        "red",
        "blue",
        "green",
        "yellow",
        "black",
        "white",
        "brown",
        "orange",
        "purple",
        "pink",
        "gray",
        "grey",
        "silver",
        "golden",
        "dark",
        "small",
        "large",
        "big",
        "little",
        "tall",
        "young",
        "old",
    ]
)

_WORD = re.compile(r"[a-z]+")
_IRREGULAR = {
    "people": "people",
    "men": "man",
    "women": "woman",
    "children": "child",
    "shoes": "shoes",
    "glasses": "glass",
    "knives": "knife",
    "shelves": "shelf",
    "boxes": "box",
    "dishes": "dish",
    "benches": "bench",
    "buses": "bus",
    "brushes": "brush",
    "clothes": "clothes",
}


def singular(word: str) -> str:
    """A plural noun's singular, by simple English rules.

    >>> singular("cars"), singular("women"), singular("bus")
    ('car', 'woman', 'bus')
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and word not in VISUAL_NOUNS:
        return word[:-1]
    return word


def object_phrases(sentence: str, *, extra_nouns: Iterable[str] = (), limit: int | None = None) -> list[str]:
    """The object phrases of ``sentence`` in order, each once (at most ``limit``)."""
    nouns = VISUAL_NOUNS | {n.lower() for n in extra_nouns}
    words = _WORD.findall(sentence.lower())
    out: list[str] = []
    for i, word in enumerate(words):
        noun = singular(word)
        if noun not in nouns:
            continue
        phrase = f"{words[i - 1]} {noun}" if i > 0 and words[i - 1] in _MODIFIERS else noun
        if phrase not in out and noun not in out:
            out.append(phrase)
        if limit is not None and len(out) >= limit:
            break
    return out
