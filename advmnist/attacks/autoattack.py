"""AutoAttack's standard ensemble (Croce & Hein 2020): diverse attacks in turn, the worst case per image.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020) runs, in its standard version, APGD on the
cross-entropy (100 iterations, one start), APGD on the targeted DLR loss (9 target
classes x 100 iterations), FAB-T (9 target classes x 100 iterations) and Square (5000
queries, no gradient). Each attack runs only on the images the earlier ones left
standing, so an image counts as robust only if every member failed on it, and the
robust accuracy after each member is what the authors' log prints.

The members come from the registry (:mod:`advmnist.attacks.registry`) by name and
keep their own defaults; ``steps`` scales every member's budget alike (100: the
standard version; 10: APGD and FAB 10 iterations, Square 500 queries). Each member
draws its random numbers from the same :class:`~advmnist.attacks.base.Draws`
(keyed by each image's place in the selection), so a shard computes what the
whole run computes.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from advmnist.attacks.base import Attack, AttackResult, is_targeted
from advmnist.attacks.forward import predict
from advmnist.errors import InvalidInput
from advmnist.attacks.norms import L2, Linf

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
#: ``steps`` of the standard version: APGD-CE's iterations; every member's budget is scaled by steps / 100.
STANDARD_STEPS = 100
#: ``broken_by`` of an image no member fooled, and of one the network gets wrong without any change.
ROBUST, MISCLASSIFIED = -1, -2


class AutoAttack(Attack):
    """The members in turn, each on the images still standing; untargeted criterion only.

    Args:
        norm: ``linf`` or ``l2`` (every member must support it).
        eps: the ball's radius: a number, or one per image (an array of N).
        steps: the budget of the standard version's APGD-CE; each member runs its default budget scaled by
            ``steps / 100`` (at least 1), so 100 is AutoAttack's standard version.
        members: registry names, in the order they run (default: :data:`STANDARD`).
        member_options: name -> options of that member (e.g. ``{"square": {"queries": 50}}``); they win over
            the scaled budget.

    ``info`` of the result, per image: ``broken_by`` (the index in :attr:`members` of the member that
    fooled it; ``ROBUST`` -1 if none did, ``MISCLASSIFIED`` -2 if the network gets it wrong unchanged),
    ``broken_at`` (that member's step or query; 0 if misclassified, -1 if robust), ``steps_run`` (all
    members' iterations), ``member_steps`` (N, members) and ``standing_after`` (N, 1 + members): whether it
    is still classified correctly before any attack and after each member; its column means are the
    robust accuracy after each member (:func:`robust_accuracy_after`).

    Example:
        >>> result = AutoAttack("linf", 0.1)(model.logits, images, labels, seed=0)
        >>> robust_accuracy_after(result)   # [clean, after APGD-CE, after APGD-T, after FAB-T, after Square]
    """

    NORMS = (Linf.name, L2.name)

    def __init__(self, norm: str = Linf.name, eps=0.3, *, steps: int = STANDARD_STEPS,
                 members: Sequence[str] | None = None, member_options: Mapping[str, Mapping] | None = None):
        from advmnist.attacks.registry import names

        if norm not in self.NORMS:
            raise InvalidInput(f"expected an AutoAttack norm in {list(self.NORMS)}, got {norm!r}")
        if steps < 1:
            raise InvalidInput(f"expected steps >= 1, got {steps}")
        members = tuple(STANDARD if members is None else members)
        allowed = [name for name in names(bounded=True) if name != "auto"]
        if not members or any(m not in allowed for m in members) or len(set(members)) != len(members):
            raise InvalidInput(f"expected distinct members among {allowed}, got {list(members)}")
        self.members = members
        self.norm, self.eps, self.steps = norm, eps, int(steps)
        self.member_options = {m: dict((member_options or {}).get(m, {})) for m in self.members}
        for index in range(len(self.members)):  # the norm, eps and options of every member are checked now
            self.member(index, eps)
        #: seconds each member spent in the last :meth:`run`
        self.member_seconds = [0.0] * len(self.members)

    def member(self, index: int, eps) -> Attack:
        """Member ``index`` for budget ``eps``, its iterations scaled by ``steps / 100``."""
        from advmnist.attacks.registry import get_entry

        entry = get_entry(self.members[index])
        iterations = max(1, round(entry.default_budget * self.steps / STANDARD_STEPS))
        return entry.make(self.norm, eps, iterations=iterations, **self.member_options[self.members[index]])

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        if is_targeted(targets):
            raise InvalidInput("AutoAttack supports only the untargeted criterion")
        count = len(images)
        eps = np.broadcast_to(np.asarray(self.eps, np.float64), (count,))
        predictions, predictions_8bit = predict(logits_fn, images)
        state = _State.start(images, predictions != labels, len(self.members))
        standing = np.flatnonzero(~state.fooled() & (eps > 0))  # a ball of radius 0 holds nothing else
        self.member_seconds = [0.0] * len(self.members)
        for index in range(len(self.members)):
            if len(standing):
                started = time.time()
                budget = eps[standing] if np.ndim(self.eps) else self.eps
                result = self.member(index, budget).run(logits_fn, images[standing], labels[standing],
                                                        targets[standing], draws=draws.take(standing),
                                                        progress=progress)
                self.member_seconds[index] = time.time() - started
                predictions[standing], predictions_8bit[standing] = result.predictions, result.predictions_8bit
                standing = state.record(index, standing, result)
            state.standing_after[:, index + 1] = ~state.fooled()
        return AttackResult(originals=images, adversarial=state.adversarial, noise=state.adversarial - images,
                            labels=labels, targets=targets, predictions=predictions,
                            predictions_8bit=predictions_8bit, info=state.info())


class _State:
    """Each image's verdict so far: which member broke it, at which step, with which example."""

    def __init__(self, adversarial, broken_by, broken_at, member_steps, standing_after):
        self.adversarial, self.broken_by, self.broken_at = adversarial, broken_by, broken_at
        self.member_steps, self.standing_after = member_steps, standing_after

    @classmethod
    def start(cls, images: np.ndarray, misclassified: np.ndarray, members: int) -> "_State":
        count = len(images)
        standing_after = np.zeros((count, members + 1), bool)
        standing_after[:, 0] = ~misclassified
        return cls(images.copy(), np.where(misclassified, MISCLASSIFIED, ROBUST).astype(np.int64),
                   np.where(misclassified, 0, -1).astype(np.int64), np.zeros((count, members), np.int64),
                   standing_after)

    def fooled(self) -> np.ndarray:
        return self.broken_by != ROBUST

    def record(self, index: int, standing: np.ndarray, result: AttackResult) -> np.ndarray:
        """Member ``index``'s result on ``standing``; the images it left standing."""
        hit = result.success
        # a fooled image keeps its example; one still standing keeps this member's best attempt
        self.adversarial[standing] = result.adversarial
        self.broken_by[standing[hit]] = index
        self.broken_at[standing[hit]] = result.info["broken_at"][hit]
        self.member_steps[standing, index] = result.info["steps_run"]
        return standing[~hit]

    def info(self) -> dict:
        return {"broken_by": self.broken_by, "broken_at": self.broken_at,
                "steps_run": self.member_steps.sum(1), "member_steps": self.member_steps,
                "standing_after": self.standing_after}


def robust_accuracy_after(result: AttackResult) -> list[float]:
    """The share of images still classified correctly before any attack and after each member in turn."""
    return [float(v) for v in result.info["standing_after"].mean(0)] if len(result) else []
