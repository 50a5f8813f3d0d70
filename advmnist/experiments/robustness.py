"""Robust accuracy against a per-image attacker with a budget eps: the standard curve of the field.

For every eps of a list, an attack of the registry (:mod:`advmnist.attacks.registry`:
PGD by default, or the AutoAttack ensemble) attacks each image within an eps-ball,
untargeted (or, for PGD, targeted); the robust accuracy at eps is the share of images
still classified correctly (an image the network gets wrong without any change is not
robust at any eps). The budgets are taken in increasing order and an image fooled at
one eps is fooled at every larger one (its example lies in the larger ball): only the
images still standing are attacked at the next eps, so the curve is non-increasing by
construction and its cost follows the images still standing.

Each image records which member of the attack broke it (for a single attack, member
0), after how many of its steps or queries, and at which eps; a plain forward pass of
the network in a graph of its own re-checks every reported example
(:meth:`RobustnessCurve.recheck`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from advmnist.attacks import PGD, Draws
from advmnist.attacks.autoattack import MISCLASSIFIED, ROBUST
from advmnist.attacks.base import as_8bit, check_images, check_labels, check_targets, is_targeted, untargeted
from advmnist.attacks.forward import predict
from advmnist.attacks.norms import L2, Linf, get_norm
from advmnist.attacks.pgd import PGDSession
from advmnist.attacks.registry import get_entry, names
from advmnist.errors import InvalidInput

#: Warn of gradient masking when an attack without gradients (Square) fooled more than this share of the
#: images that every gradient attack before it missed. On networks whose gradients are not masked, Square
#: added at most a few tenths of a percentage point after APGD in AutoAttack's own evaluations (Croce & Hein
#: 2020); a whole percent is several times that, and on 100 images it takes at least 2 images.
MASKING_SHARE = 0.01
#: Options the robustness settings pass on to the attacks that take them (PGD's).
ATTACK_OPTIONS = ("restarts", "rel_step")
DEFAULT_EPS = {Linf.name: (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), L2.name: (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)}


def parse_eps(text: str, norm: str) -> tuple[float, ...]:
    """``"0,0.05,0.1"`` -> sorted unique budgets, each in [0, 1] for linf and >= 0 for l2."""
    try:
        values = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError as err:
        raise InvalidInput(f"expected comma-separated numbers for --eps, got {text!r}") from err
    if not values:
        raise InvalidInput("expected at least one eps")
    top = 1.0 if norm == Linf.name else np.sqrt(784.0)
    if not all(np.isfinite(v) and 0 <= v <= top for v in values):
        raise InvalidInput(f"expected every eps in [0, {top:g}] for {norm}, got {text!r}")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class RobustnessSettings:
    """The ``robustness`` command's defaults: 1000 test images, untargeted, AutoAttack's standard ensemble.

    ``steps`` are the attack's iterations (None: its default; for ``auto``, the budget of APGD-CE that
    scales every member's, 100 in AutoAttack's standard version); ``restarts`` and ``rel_step`` apply to the
    attacks that take them (PGD). :meth:`resolved` fills in every default the attack takes.
    """

    norm: str = Linf.name
    eps: tuple[float, ...] = DEFAULT_EPS[Linf.name]
    count: int = 1000
    offset: int = 0
    split: str = "test"
    attack: str = "auto"
    steps: int | None = None
    restarts: int | None = None
    rel_step: float | None = None
    seed: int = 0
    target: str | None = None   # a target rule for a targeted attack

    @property
    def file_stem(self) -> str:
        """``robustness_<norm>``, with ``_<attack>`` for every attack but PGD, and ``_targeted_<rule>``."""
        return (f"robustness_{self.norm}" + ("" if self.attack == "pgd" else f"_{self.attack}")
                + (f"_targeted_{self.target}" if self.target else ""))

    def resolved(self) -> "RobustnessSettings":
        """These settings with the attack's defaults filled in; refuses a norm, an option or a target that the
        attack does not take."""
        entry = get_entry(self.attack)
        if not entry.bounded:
            raise InvalidInput(f"expected an attack bounded by eps ({', '.join(names(bounded=True))}), got "
                               f"{self.attack!r}")
        entry.check_norm(self.norm)
        if self.target is not None and not entry.targeted:
            raise InvalidInput(f"{self.attack} supports only the untargeted criterion")
        filled = {"steps": entry.default_budget if self.steps is None else self.steps}
        for option in ATTACK_OPTIONS:
            value = getattr(self, option)
            if entry.accepts(option):
                filled[option] = entry.default(option) if value is None else value
            elif value is not None:
                raise InvalidInput(f"expected no {option} for {self.attack}, which has no such option")
        return dataclasses.replace(self, **filled)

    def make_attack(self, eps):
        """The attack at budget ``eps``, with these (resolved) settings."""
        options = {option: getattr(self, option) for option in ATTACK_OPTIONS if getattr(self, option) is not None}
        return get_entry(self.attack).make(self.norm, eps, iterations=self.steps, **options)

    def members(self) -> list[str]:
        """The attacks that run in turn at each eps: the ensemble's members, or the attack alone."""
        attack = self.make_attack(max(self.eps))
        return list(getattr(attack, "members", (self.attack,)))


@dataclasses.dataclass
class RobustnessCurve:
    """One model's robust accuracy at every eps, and each image's smallest eps (of the list) that fooled it."""

    model: str
    eps: list[float]
    robust_accuracy: list[float]
    fooled_8bit: list[float]       # of the examples found at each eps, the share that still fool as 8-bit images
    eps_fooled: np.ndarray         # (N,) inf where no eps of the list fooled the image
    adversarial: np.ndarray        # (N, 28, 28): the example at that eps (the original if never fooled)
    fools_8bit: np.ndarray         # (N,) whether that example still fools once rounded to 8-bit pixels
    seconds: float
    members: list[str]             # the attacks that ran in turn at each eps (one for a single attack)
    broken_by: np.ndarray          # (N,) int64: the member that fooled it, ROBUST -1, MISCLASSIFIED -2
    broken_at: np.ndarray          # (N,) int64: that member's step or query (0 misclassified, -1 robust)
    member_seconds: list[float]    # each member's time over every eps
    confirmed: np.ndarray | None = None  # (N,) whether a plain forward pass agrees (:meth:`recheck`)

    @classmethod
    def from_images(cls, model: str, eps, eps_fooled: np.ndarray, adversarial: np.ndarray, fools_8bit: np.ndarray,
                    seconds: float, *, members, broken_by, broken_at, member_seconds,
                    confirmed=None) -> "RobustnessCurve":
        """The curve from each image's smallest fooling eps (0: wrong without any change) and its example."""
        eps = [float(e) for e in sorted(eps)]
        robust = [float(np.mean(eps_fooled > e)) for e in eps]
        # the examples found at each eps (none at 0: an image wrong without change needs no example)
        found = [np.flatnonzero(eps_fooled == e) if e > 0 else np.zeros(0, np.int64) for e in eps]
        share = [float(fools_8bit[hit].mean()) if len(hit) else 1.0 for hit in found]
        return cls(model=model, eps=eps, robust_accuracy=robust, fooled_8bit=share, eps_fooled=eps_fooled,
                   adversarial=adversarial, fools_8bit=fools_8bit, seconds=seconds, members=list(members),
                   broken_by=broken_by, broken_at=broken_at, member_seconds=[float(s) for s in member_seconds],
                   confirmed=confirmed)

    def robust_accuracy_after(self) -> list[list[float]]:
        """Per eps: the share standing before its attack (not fooled at a smaller eps), then after each
        member in turn (AutoAttack's log); the last is the robust accuracy at that eps."""
        table = []
        for e in self.eps:
            if e == 0:  # nothing is attacked: the clean accuracy throughout
                table.append([float(np.mean(self.eps_fooled > 0))] * (len(self.members) + 1))
                continue
            here = self.eps_fooled == e
            table.append([float(np.mean(self.eps_fooled >= e))]
                         + [float(np.mean((self.eps_fooled > e) | (here & (self.broken_by > k))))
                            for k in range(len(self.members))])
        return table

    def below_minimal(self, minimal_norms) -> list[int]:
        """Per eps, the images fooled within it whose minimal norm (another search's) is larger: no attack can
        fool an image below its true minimal norm, so each one is a success the minimal search missed."""
        found = np.asarray(minimal_norms, np.float64)
        return [int(((self.eps_fooled <= e) & (found > e)).sum()) for e in self.eps]

    def recheck(self, predict_proba: Callable, images: np.ndarray, labels: np.ndarray, targets=None, *,
                norm: str) -> np.ndarray:
        """Check every verdict with a plain forward pass (``predict_proba``, a graph of its own): an example
        fools the network, inside its eps-ball and [0, 1], and fools as an 8-bit image exactly when the attack
        said so; an image never fooled is classified correctly. Sets and returns :attr:`confirmed`."""
        targets = untargeted(len(labels)) if targets is None else np.asarray(targets)

        def reached(images_):
            predictions = predict_proba(images_).argmax(1)
            return predictions == targets if is_targeted(targets) else predictions != labels

        fooled = np.isfinite(self.eps_fooled)
        rounded = as_8bit(self.adversarial)
        radius = np.where(fooled, self.eps_fooled, 0.0)
        size = get_norm(norm).measure(self.adversarial - images).astype(np.float64)
        in_ball = ((size <= radius * (1 + 1e-5) + 1e-6)
                   & (self.adversarial.reshape(len(images), -1).min(1, initial=0) >= 0)
                   & (self.adversarial.reshape(len(images), -1).max(1, initial=1) <= 1))
        self.confirmed = (reached(self.adversarial) == fooled) & in_ball & (~fooled | (reached(rounded)
                                                                                       == self.fools_8bit))
        return self.confirmed

    def warnings(self) -> list[str]:
        """What the numbers themselves say is suspect: unconfirmed examples, signs of gradient masking."""
        notes = []
        if self.confirmed is not None and not self.confirmed.all():
            notes.append(f"{int((~self.confirmed).sum())} of {len(self.confirmed)} verdicts not confirmed by a "
                         "plain forward pass")
        gradient = [k for k, name in enumerate(self.members) if not get_entry(name).gradient_free]
        for k, name in enumerate(self.members):
            if not get_entry(name).gradient_free or not any(g < k for g in gradient):
                continue
            mine = self.broken_by == k
            if mine.mean() > MASKING_SHARE:
                per_eps = ", ".join(f"{e:g}: {int((mine & (self.eps_fooled == e)).sum())}" for e in self.eps
                                    if (mine & (self.eps_fooled == e)).any())
                notes.append(f"possible gradient masking: {name} fooled {int(mine.sum())} of {len(mine)} images "
                             f"({100 * mine.mean():.1f} %, more than {100 * MASKING_SHARE:g} %) that every gradient "
                             f"attack before it missed (per eps {per_eps}); the gradient attacks' numbers alone "
                             "would overstate robustness")
        return notes

    def summary(self) -> dict:
        examples = np.isfinite(self.eps_fooled) & (self.eps_fooled > 0)
        return {"model": self.model, "eps": self.eps, "robust_accuracy": self.robust_accuracy,
                "fooled_8bit": self.fooled_8bit, "clean_accuracy": float(np.mean(self.eps_fooled > 0)),
                "seconds": round(self.seconds, 2), "members": self.members,
                "robust_accuracy_after": self.robust_accuracy_after(),
                "member_seconds": [round(s, 2) for s in self.member_seconds], "examples": int(examples.sum()),
                "fools_8bit": int(self.fools_8bit[examples].sum()),
                "unconfirmed": None if self.confirmed is None else int((~self.confirmed).sum()),
                "warnings": self.warnings()}


def robustness_curve(logits_fn: Callable, images: np.ndarray, labels: np.ndarray, settings: RobustnessSettings, *,
                     model: str, targets: np.ndarray | None = None, progress: bool = False,
                     positions: np.ndarray | None = None, population: int | None = None) -> RobustnessCurve:
    """The attack at every eps of ``settings.eps`` in increasing order, on the images still standing only.

    ``positions`` and ``population``: for a shard of a selection, as in
    :meth:`advmnist.attacks.Attack.__call__` (each image keeps its random draws).
    """
    started = time.time()
    settings = settings.resolved()
    count = len(images)
    images = check_images(images)
    labels = check_labels(labels, count, allow_unknown=False)
    targets = untargeted(count) if targets is None else check_targets(targets, labels)
    targeted = is_targeted(targets)
    if targeted and not get_entry(settings.attack).targeted:
        raise InvalidInput(f"{settings.attack} supports only the untargeted criterion")
    draws = Draws.of(settings.seed, count, positions, population)
    members = settings.members()
    state = _Verdicts(images, len(members))
    # without any change: the images the network already gets wrong (or already reads as their target)
    predictions, rounded = predict(logits_fn, images)
    clean = predictions == targets if targeted else predictions != labels
    state.eps_fooled[clean], state.broken_by[clean], state.broken_at[clean] = 0.0, MISCLASSIFIED, 0
    state.fools_8bit[clean] = (rounded == targets if targeted else rounded != labels)[clean]
    with _Runner(logits_fn, settings.norm, targeted) as run:
        for eps in sorted(settings.eps):
            standing = np.flatnonzero(np.isinf(state.eps_fooled)) if eps > 0 else np.zeros(0, np.int64)
            if not len(standing):
                continue
            attack = settings.make_attack(eps)
            began = time.time()
            result = run(attack, images[standing], labels[standing], targets[standing], draws.take(standing),
                         progress)
            spent = getattr(attack, "member_seconds", [time.time() - began])
            state.record(eps, standing, result, spent)
    return RobustnessCurve.from_images(model, settings.eps, state.eps_fooled, state.adversarial, state.fools_8bit,
                                       time.time() - started, members=members, broken_by=state.broken_by,
                                       broken_at=state.broken_at, member_seconds=state.member_seconds)


class _Verdicts:
    """Each image's smallest fooling eps so far, its example, and which member broke it at which step."""

    def __init__(self, images: np.ndarray, members: int):
        count = len(images)
        self.eps_fooled = np.full(count, np.inf)
        self.adversarial = images.copy()
        self.fools_8bit = np.zeros(count, bool)
        self.broken_by = np.full(count, ROBUST, np.int64)
        self.broken_at = np.full(count, -1, np.int64)
        self.member_seconds = [0.0] * members

    def record(self, eps: float, standing: np.ndarray, result, seconds: list[float]) -> None:
        hit = result.success
        fooled = standing[hit]
        self.eps_fooled[fooled] = eps
        self.adversarial[fooled] = result.adversarial[hit]
        self.fools_8bit[fooled] = result.success_8bit[hit]
        self.broken_by[fooled] = result.info["broken_by"][hit] if "broken_by" in result.info else 0
        self.broken_at[fooled] = result.info["broken_at"][hit]
        self.member_seconds = [a + b for a, b in zip(self.member_seconds, seconds)]


class _Runner:
    """Runs an attack on checked inputs; PGD shares one graph and session over every eps (building them costs
    as much as a few steps), the other attacks build their own."""

    def __init__(self, logits_fn: Callable, norm: str, targeted: bool):
        self.logits_fn, self.norm, self.targeted = logits_fn, norm, targeted
        self.session: PGDSession | None = None

    def __enter__(self) -> "_Runner":
        return self

    def __exit__(self, *exc) -> None:
        if self.session is not None:
            self.session.__exit__(*exc)

    def __call__(self, attack, images, labels, targets, draws, progress):
        if isinstance(attack, PGD):
            if self.session is None:
                self.session = PGDSession(self.logits_fn, self.norm, targeted=self.targeted)
            return attack.run_in(self.session, images, labels, targets, draws=draws, progress=progress)
        return attack.run(self.logits_fn, images, labels, targets, draws=draws, progress=progress)


#: The command, and the start of its result files' names (for ``merge``: :mod:`advmnist.experiments.shards`).
COMMAND, SHARD_PREFIX = "robustness", "robustness_"


def merge_shards(out: Path, stem: str, parts: list):
    """The shards' curves, merged into the files a whole run writes; its record (and None: no AttackResult)."""
    from advmnist.experiments.minimal import matching_minimal
    from advmnist.experiments.robustness_files import write_robustness
    from advmnist.experiments.shards import interleave, total_seconds

    recorded = parts[0].record["settings"]
    settings = RobustnessSettings(**{**recorded, "eps": tuple(recorded["eps"])})
    keys = ("eps_fooled", "adversarial", "fools_8bit", "broken_by", "broken_at")
    missing = [key for key in keys + ("members",) if key not in parts[0].arrays]
    if missing:
        raise InvalidInput(f"{parts[0].path}: expected the arrays {', '.join(missing)} (written by this version of "
                           "advmnist robustness); run the shards again")
    indices, labels = interleave(parts, "indices"), interleave(parts, "labels")
    per_model = {key: interleave(parts, key, axis=1) for key in keys}
    confirmed = interleave(parts, "confirmed", axis=1) if "confirmed" in parts[0].arrays else None
    members = [str(m) for m in parts[0].arrays["members"]]
    curves = []
    for m, model in enumerate(parts[0].record["models"]):
        member_seconds = [total_seconds(parts, lambda record: record["models"][m]["member_seconds"][k])
                          for k in range(len(members))]
        curves.append(RobustnessCurve.from_images(
            model["model"], settings.eps, per_model["eps_fooled"][m], per_model["adversarial"][m],
            per_model["fools_8bit"][m], total_seconds(parts, lambda record: record["models"][m]["seconds"]),
            members=members, broken_by=per_model["broken_by"][m], broken_at=per_model["broken_at"][m],
            member_seconds=member_seconds, confirmed=None if confirmed is None else confirmed[m]))
    minimal = ({} if settings.target is not None
               else matching_minimal(out, settings.norm, indices, [c.model for c in curves]))
    return write_robustness(out, settings, curves, indices, labels, minimal), None
