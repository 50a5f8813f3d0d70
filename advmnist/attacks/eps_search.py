"""Smaller minimal norms from AutoAttack's gradient members: a per-image bisection over eps with APGD.

FMN (:mod:`advmnist.attacks.fmn`) walks along the boundary and settles in a local
minimum; APGD (:mod:`advmnist.attacks.apgd`), given a budget, searches the whole ball
with a step size that adapts. On the undefended test images the two disagree: at
Linf 0.1 AutoAttack broke 6 of 100 images whose FMN minimum was above 0.1. So, after
FMN, each image that FMN fooled gets ``rounds`` steps of a bisection over eps between
``LOWEST`` times its best norm and that norm:

1. the budget tested is the middle of the interval (for L-infinity, the 8-bit step
   ``k / 255`` at or below it: :func:`grid_budget`);
2. APGD-CE runs within it, then APGD-T (its targeted DLR loss, ``n_target_classes``
   classes) on the images APGD-CE left standing: AutoAttack's first two members;
3. a point that fools the network is rounded to 8-bit pixels, as every ``minimal``
   result is (its change first stretched by 1, then 1.02, then 1.05 times, the first
   that still fools once rounded: APGD stops at the first point across the boundary,
   which rounding often brings back); if that image fools the network and its effective
   change is smaller than the best so far, it becomes the best and the interval's top;
   otherwise the tested budget becomes the interval's bottom.

The search runs only where AutoAttack's members do: the untargeted criterion, in
L-infinity or L2 (:data:`SEARCH_NORMS`). Every image's budget, random start and steps
depend on its own rows and on its place in the selection only (APGD's draws), so a
shard searches exactly as the whole run does.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.apgd import APGD, APGD_NORMS, APGDSession
from advmnist.attacks.base import as_8bit, untargeted
from advmnist.attacks.norms import Linf, get_norm

#: the norms the search runs in (APGD's)
SEARCH_NORMS = APGD_NORMS
#: the bisection's bottom, as a share of the image's best norm (while no budget below it has failed)
LOWEST = 0.8
#: norms closer than this are the same 8-bit change (float rounding)
TIE = 1e-6
#: the factors an APGD change is stretched by, in turn, before its rounding to 8-bit pixels
STRETCHES = (1.0, 1.02, 1.05)


def grid_budget(norm: str, middle: np.ndarray) -> np.ndarray:
    """The budget tested for an interval's ``middle``: itself, or in L-infinity the 8-bit step at or below it
    (``k / 255``): APGD's L-infinity points sit mostly on the ball's surface, ``k / 255`` from pixels that are
    themselves multiples of 1/255, so their 8-bit rounding keeps them (a point at ``(k + 0.49) / 255``,
    barely across the boundary, is rounded back to ``k / 255`` on most pixels and stops fooling)."""
    if norm != Linf.name:
        return middle.astype(np.float32)
    return (np.floor(middle * 255.0 + 1e-4) / 255.0).astype(np.float32)


def search_eps(logits_fn, images, labels, delta, found, norm: str, *, rounds: int, draws, steps: int = 100,
               n_target_classes: int = 3, on_round=None) -> np.ndarray:
    """``rounds`` bisection steps per image (see the module's text) from the 8-bit changes ``delta``
    (N, 28, 28) of the ``found`` images: the changes, each replaced where the search found a smaller one.

    ``on_round(searched)`` is called after each round with the number of images it searched.
    """
    size = get_norm(norm).measure
    delta = delta.copy()
    high = np.where(found, size(delta), np.inf).astype(np.float32)
    low = (LOWEST * np.where(found, high, 0.0)).astype(np.float32)
    with APGDSession(logits_fn, norm, "ce") as ce, APGDSession(logits_fn, norm, "dlr-targeted") as dlr:
        for _ in range(rounds):
            budget = grid_budget(norm, (low + high) / 2)
            inside = (budget < high - 1e-6) & (budget > low + 1e-6) & (budget > 0)
            searched = np.flatnonzero(found & inside)
            if len(searched):
                change, fooled = _apgd_both((ce, dlr), images[searched], labels[searched], budget[searched],
                                            norm, steps, n_target_classes, draws.take(searched))
                sizes = size(change)
                smaller = fooled & (sizes < high[searched] - TIE)  # by more than float rounding
                better, worse = searched[smaller], searched[~smaller]
                delta[better], high[better] = change[smaller], sizes[smaller]
                low[better] = np.minimum(low[better], LOWEST * high[better])  # room below the new best
                low[worse] = budget[worse]
            if on_round is not None:
                on_round(len(searched))
    return delta


def _apgd_both(sessions, images, labels, eps, norm, steps, n_target_classes, draws):
    """APGD-CE, then APGD-T on the images it left standing, within ``eps`` (one per image): each image's
    8-bit change and whether that 8-bit image fools the network."""
    adversarial = images.copy()
    standing = np.arange(len(images))
    for session in sessions:
        if not len(standing):
            break
        attack = APGD(norm, eps[standing], loss=session.loss, steps=steps, n_target_classes=n_target_classes)
        result = attack.run_in(session, images[standing], labels[standing], untargeted(len(standing)),
                               draws=draws.take(standing), progress=False)
        adversarial[standing[result.success]] = result.adversarial[result.success]
        standing = standing[~result.success]
    delta = adversarial - images
    change, fooled = np.zeros_like(delta), np.zeros(len(images), bool)
    predict = sessions[0].loop.clean.predict
    for stretch in STRETCHES:
        rounded = as_8bit(images + stretch * delta)
        # a pixel the attack left alone is the original, exactly
        rounded = np.where(np.abs(rounded - images) < 0.5 / 255, images, rounded)
        now = ~fooled & (predict(sessions[0].sess, rounded)[0] != labels)
        change[now], fooled = rounded[now] - images[now], fooled | now
    return change, fooled
