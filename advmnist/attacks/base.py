"""The attack contract: one public call that checks inputs, runs the attack, and measures it.

In the spirit of Foolbox 3's ``Attack.__call__``: every attack subclasses :class:`Attack`
and implements :meth:`Attack.run` only. The shared work lives here, once:

- inputs are checked (images (N, 28, 28) in [0, 1], labels and targets in 0..9, a
  target never equal to the true label);
- the criterion: with ``targets`` an example succeeds when the network predicts its
  target, without (untargeted) when it predicts anything but the true label;
- the result (:class:`AttackResult`) carries the arrays, success also after rounding
  to 8-bit pixels (what a saved PNG holds), and the L1, L2 and L-infinity norms of
  the *effective* perturbation ``adversarial - original`` (after clipping to [0, 1]).

An attack receives ``logits_fn``, a function from an image tensor to the logits of
the network, built into the current graph (:meth:`advmnist.model.frozen.FrozenModel.logits`
for a frozen model).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Callable

import numpy as np

from advmnist.attacks.norms import NORMS, Linf
from advmnist.data.mnist import IMAGE_SIZE, NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.model.rowwise import padded_rows
from advmnist.tfcompat import tf1

LogitsFn = Callable[[object], object]
UNTARGETED = -1  # the target of every image of an untargeted attack


@dataclasses.dataclass
class AttackResult:
    """What an attack did to each image.

    ``predictions_8bit`` are the network's predictions for the adversarial images
    rounded to 8-bit pixels. ``noise`` is what the attack optimized (before clipping);
    ``info`` holds per-image arrays particular to an attack (e.g. ``cross_entropy``).
    """

    originals: np.ndarray
    adversarial: np.ndarray
    noise: np.ndarray
    labels: np.ndarray
    targets: np.ndarray          # UNTARGETED (-1) for every image of an untargeted attack
    predictions: np.ndarray
    predictions_8bit: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def targeted(self) -> bool:
        return is_targeted(self.targets)

    def reached(self, predictions: np.ndarray) -> np.ndarray:
        """The criterion: the target predicted (targeted), or anything but the label (untargeted)."""
        if self.targeted:
            return predictions == self.targets
        return predictions != self.labels

    @property
    def success(self) -> np.ndarray:
        return self.reached(self.predictions)

    @property
    def success_8bit(self) -> np.ndarray:
        return self.reached(self.predictions_8bit)

    @functools.cached_property
    def norms(self) -> dict[str, np.ndarray]:
        """``l1``, ``l2``, ``linf`` of each image's effective perturbation (float32)."""
        delta = self.adversarial - self.originals
        return {name: norm.measure(delta) for name, norm in NORMS.items()}

    def __len__(self) -> int:
        return len(self.originals)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a results file keeps: all of the result (``info`` entries as ``info_<key>``)."""
        return {"originals": self.originals, "noise": self.noise, "adversarial": self.adversarial,
                "labels": self.labels, "targets": self.targets, "predictions": self.predictions,
                "predictions_8bit": self.predictions_8bit,
                **{f"info_{key}": value for key, value in self.info.items()}}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "AttackResult":
        """The result that :meth:`arrays` wrote (other keys are ignored)."""
        return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls) if f.name != "info"},
                   info={key[len("info_"):]: np.asarray(value) for key, value in arrays.items()
                         if key.startswith("info_")})

    def take(self, index) -> "AttackResult":
        """The result for a subset of the images (a slice or an index array)."""
        return AttackResult(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
                               if f.name != "info"},
                            info={key: value[index] for key, value in self.info.items()})

    @classmethod
    def concatenate(cls, parts: list["AttackResult"]) -> "AttackResult":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)
                      if f.name != "info"},
                   info={key: np.concatenate([p.info[key] for p in parts]) for key in parts[0].info})


class AttackInterrupted(KeyboardInterrupt):
    """Ctrl-C after some images were finished: ``partial`` holds the first images' results."""

    def __init__(self, partial: AttackResult):
        super().__init__(f"interrupted after {len(partial)} images")
        self.partial = partial


class Attack(abc.ABC):
    """Base of every attack: ``attack(logits_fn, images, labels, targets=...)`` -> :class:`AttackResult`."""

    #: Whether an image may have its true label as target (a universal noise is applied to every image,
    #: those already of the target class included); for a per-image attack it is a mistake.
    target_may_be_label: bool = False

    def __call__(self, logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray | None = None, *,
                 targets: np.ndarray | None = None, seed: int = 0, progress: bool = False,
                 positions: np.ndarray | None = None, population: int | None = None) -> AttackResult:
        """Attack ``images`` (N, 28, 28) in [0, 1].

        Args:
            logits_fn: image tensor -> logits of the network under attack.
            labels: true labels (N,); unknown labels (-1) are allowed for a targeted attack.
            targets: target class per image (targeted), or None (untargeted: any wrong class).
            seed: seeds whatever the attack draws at random.
            progress: show a progress bar on stderr.
            positions, population: when ``images`` are a shard of a larger selection of
                ``population`` images, each image's place in it; an image then gets the
                random draws it gets when the whole selection is attacked (:class:`Draws`).
        """
        images = check_images(images)
        labels = check_labels(labels, len(images), allow_unknown=targets is not None)
        targets = (untargeted(len(images)) if targets is None
                   else check_targets(targets, labels, may_be_label=self.target_may_be_label))
        draws = Draws.of(seed, len(images), positions, population)
        return self.run(logits_fn, images, labels, targets, draws=draws, progress=progress)

    @abc.abstractmethod
    def run(self, logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, targets: np.ndarray, *,
            draws: "Draws", progress: bool) -> AttackResult:
        """The attack itself, on checked inputs (``targets`` all UNTARGETED when untargeted); every random
        draw comes from ``draws``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" if not isinstance(v, np.ndarray) else f"{k}=<array {v.shape}>"
                           for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True)
class Draws:
    """An attack's random draws, tied to each image's place in the selection it belongs to.

    An attack run on a shard (images K, K+N, ... of a selection) gets, image by image,
    the same random numbers as a run on the whole selection: ``positions`` are the
    images' places in the selection and ``population`` its size.
    """

    seed: int
    positions: np.ndarray
    population: int

    @classmethod
    def of(cls, seed: int, count: int, positions=None, population: int | None = None) -> "Draws":
        positions = np.arange(count) if positions is None else np.asarray(positions, np.int64)
        population = count if population is None else int(population)
        if positions.shape != (count,) or (count and (positions.min() < 0 or positions.max() >= population)):
            raise InvalidInput(f"expected {count} positions in 0..{population - 1}, got {positions}")
        if len(np.unique(positions)) != count:
            raise InvalidInput("expected distinct positions")
        return cls(int(seed), positions, population)

    def normal_rows(self, shape: tuple[int, ...], *, blocks: int = 1) -> np.ndarray:
        """(blocks, count) + shape: rows of ``default_rng(seed).standard_normal((blocks, population) + shape)``
        at ``positions`` of every block (float64, as numpy draws them).

        The stream is read in pieces of 32 MB up to the last row needed (numpy draws the
        same numbers in pieces as at once), so memory stays bounded for any selection.
        """
        rng = np.random.default_rng(self.seed)
        size = int(np.prod(shape))
        rows = (np.arange(blocks)[:, None] * self.population + self.positions[None, :]).ravel()  # in the stream
        out = np.empty((len(rows), size))
        piece = max(1, 2 ** 22 // size)  # rows per draw: 32 MB of float64
        for begin in range(0, int(rows.max()) + 1 if len(rows) else 0, piece):
            drawn = rng.standard_normal((min(piece, int(rows.max()) + 1 - begin), size))
            hit = (rows >= begin) & (rows < begin + len(drawn))
            out[hit] = drawn[rows[hit] - begin]
        return out.reshape((blocks, len(self.positions)) + tuple(shape))

    def take(self, index) -> "Draws":
        """The draws of a subset of the images (an index array or a slice)."""
        return Draws(self.seed, self.positions[index], self.population)

    def generator(self, index: int, *key: int) -> np.random.Generator:
        """A generator of its own for image ``index`` (seeded by the seed, ``key`` and the image's position)."""
        return np.random.default_rng([self.seed, *key, int(self.positions[index])])


def is_targeted(targets: np.ndarray) -> bool:
    """Whether ``targets`` are those of a targeted attack: some images, each with a target class."""
    return bool(len(targets)) and bool((targets != UNTARGETED).all())


def untargeted(count: int) -> np.ndarray:
    """The targets of an untargeted attack on ``count`` images."""
    return np.full(count, UNTARGETED, np.int64)


def check_eps(norm: str, eps) -> None:
    """A budget: a number or one per image, finite, >= 0, and <= 1 for L-infinity (pixels are in [0, 1])."""
    values = np.atleast_1d(np.asarray(eps, np.float64))
    if (not np.all(np.isfinite(values)) or values.min(initial=0) < 0
            or (norm == Linf.name and values.max(initial=0) > 1)):
        raise InvalidInput(f"expected eps >= 0{' and <= 1' if norm == 'linf' else ''}, got {eps}")


def check_images(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InvalidInput(f"expected images of shape (N, 28, 28), got {images.shape}")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise InvalidInput("expected image values in [0, 1]")
    return images


def check_labels(labels, count: int, *, allow_unknown: bool) -> np.ndarray:
    if labels is None:
        if not allow_unknown:
            raise InvalidInput("expected the true labels for an untargeted attack")
        return np.full(count, -1, np.int64)
    labels = np.asarray(labels, np.int64)
    low = -1 if allow_unknown else 0
    if labels.shape != (count,) or (count and (labels.min() < low or labels.max() >= NUM_CLASSES)):
        raise InvalidInput(f"expected {count} labels in 0..9, got {labels}")
    return labels


def check_targets(targets, labels: np.ndarray, *, may_be_label: bool = False) -> np.ndarray:
    targets = np.asarray(targets, np.int64)
    if targets.shape != labels.shape or (len(targets) and (targets.min() < 0 or targets.max() >= NUM_CLASSES)):
        raise InvalidInput(f"expected {len(labels)} targets in 0..9, got {targets}")
    same = [] if may_be_label else np.flatnonzero(targets == labels)
    if len(same):
        raise InvalidInput(f"expected targets different from the true labels, got target {int(targets[same[0]])} "
                           f"for image {int(same[0])} of label {int(labels[same[0]])}")
    return targets


def row_cross_entropy(logits, labels):
    """Each row's softmax cross-entropy, its value and gradient independent of the other rows.

    TensorFlow's CPU kernel takes the exponentials of the (N, 10) logits as one flat
    buffer, in SIMD packets of up to 16 floats, and the last ``10 N mod 16`` values with
    scalar code that rounds differently; with the rows padded to a multiple of 16
    (:func:`advmnist.model.rowwise.padded_rows`), every value is in a full packet.
    """
    tf = tf1()
    padded, padded_labels = padded_rows(logits, labels)
    entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=padded_labels, logits=padded)
    return entropy[:tf.shape(logits)[0]]


def row_softmax(logits):
    """``tf.nn.softmax`` with each row independent of the others (see :func:`row_cross_entropy`)."""
    tf = tf1()
    (padded,) = padded_rows(logits)
    return tf.nn.softmax(padded)[:tf.shape(logits)[0]]


def row_log_softmax(logits):
    """``tf.nn.log_softmax`` with each row independent of the others (see :func:`row_cross_entropy`)."""
    tf = tf1()
    (padded,) = padded_rows(logits)
    return tf.nn.log_softmax(padded)[:tf.shape(logits)[0]]


def check_counts(**counts: int) -> None:
    """Refuse a count below 1 (steps, restarts, check_every, ...) in one message that names them all."""
    if min(counts.values()) < 1:
        names = list(counts)
        named = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise InvalidInput(f"expected {named} >= 1, got {', '.join(str(v) for v in counts.values())}")


def rounded_to_8bit(images):
    """What a saved 8-bit PNG holds, as a graph op: round to 1/255 steps."""
    tf = tf1()
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0) / 255.0


def as_8bit(images: np.ndarray) -> np.ndarray:
    """What a saved 8-bit PNG holds, in numpy: :func:`rounded_to_8bit` outside a graph."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def progress_bar(total: int, description: str, enabled: bool, initial: int = 0):
    """A tqdm bar on stderr (with its ETA); ``initial``: the part already done (a resumed run)."""
    from tqdm import tqdm

    # a terminal that reports no width (a fresh pseudo-terminal, some containers) would get an empty bar
    known = enabled and min(_terminal_size()) > 0
    return tqdm(total=total, desc=description, disable=not enabled, leave=False, dynamic_ncols=known,
                ncols=None if known else 100, nrows=None if known else 24, mininterval=0.5, initial=initial)


def _terminal_size() -> tuple[int, int]:
    import os
    import sys

    try:
        return tuple(os.get_terminal_size(sys.stderr.fileno()))
    except (OSError, ValueError, AttributeError):
        return 0, 0
