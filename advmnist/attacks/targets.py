"""Which class each image should be turned into: the target rules of the attacks.

``9-d`` (the reference), ``d+1`` (mod 10), ``random`` (seeded per image, never the
true label) or one class 0-9 for every image.
"""
from __future__ import annotations

import numpy as np

from advmnist.data.mnist import NUM_CLASSES
from advmnist.errors import InvalidInput

TARGET_RULES = ("9-d", "d+1", "random")


def parse_target_rule(rule: str) -> str:
    rule = str(rule).strip()
    if rule in TARGET_RULES or (rule.isdigit() and 0 <= int(rule) < NUM_CLASSES):
        return rule
    raise InvalidInput(f"expected --target 9-d, d+1, random or a class 0-9, got {rule!r}")


def choose_targets(labels: np.ndarray, rule: str, *, seed: int = 0, indices: np.ndarray | None = None) -> np.ndarray:
    """Target class for each label under ``rule``; never the true label.

    ``random`` draws each image's target from the nine wrong classes with a generator
    seeded by ``seed`` and the image's index, so an image keeps its target whatever
    else is selected with it.
    """
    rule = parse_target_rule(rule)
    labels = np.asarray(labels, np.int64)
    if rule == "9-d":
        targets = 9 - labels
    elif rule == "d+1":
        targets = (labels + 1) % NUM_CLASSES
    elif rule == "random":
        indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        shifts = [np.random.default_rng([seed, int(i)]).integers(1, NUM_CLASSES) for i in indices]
        targets = (labels + np.asarray(shifts, np.int64)) % NUM_CLASSES
    else:
        targets = np.full(len(labels), int(rule), np.int64)
    same = np.flatnonzero(targets == labels)
    if len(same):
        where = indices[same] if indices is not None else same
        raise InvalidInput(f"target equals the true label for image(s) {where.tolist()} "
                           f"(label {int(labels[same[0]])}); expected a different class, "
                           "e.g. --target 9-d, d+1 or random")
    return targets
