"""Norms of a perturbation: the penalty an attack adds to its loss, and the size it reports.

A norm is a small object with both faces, so no attack or report repeats an
``if reg == "l2" ...`` chain:

- :meth:`Norm.penalty`: a TensorFlow scalar summed over every element of a noise tensor
  (for L2 half the squared norm, as ``tf.nn.l2_loss``), for the loss;
- :meth:`Norm.measure`: the norm of each image's perturbation, for reports;
- graph ops on flattened perturbations (rows of a (B, n) tensor) for the minimal-norm
  search: :meth:`Norm.size`, :meth:`Norm.dual_size`, :meth:`Norm.project` onto a ball of
  per-row radius and :meth:`Norm.shrink` (the path from a perturbation down to zero that
  removes the most norm per step: scaling for L2, soft-thresholding for L1, clipping for
  L-infinity).

A :class:`Regularizer` is a norm with a weight; ``none`` is the regularizer without a norm.
"""
from __future__ import annotations

import abc
import dataclasses

import numpy as np

from advmnist.errors import InvalidInput
from advmnist.tfcompat import tf1


class Norm(abc.ABC):
    name: str = ""

    def penalty(self, noise):
        """Penalty of a noise tensor for a loss, summed over all its elements."""
        raise InvalidInput(f"expected a norm with a penalty (l2 or l1), got {self.name}")

    def penalty_value(self, noise: np.ndarray) -> float:
        """:meth:`penalty` of a NumPy array, in float64 (for reports)."""
        raise InvalidInput(f"expected a norm with a penalty (l2 or l1), got {self.name}")

    @abc.abstractmethod
    def measure(self, delta: np.ndarray) -> np.ndarray:
        """Norm of each image's perturbation: ``delta`` (N, ...) -> (N,) float32."""

    @abc.abstractmethod
    def size(self, flat):
        """The norm of each row of a (B, n) tensor -> (B,)."""

    @abc.abstractmethod
    def dual_size(self, flat):
        """The dual norm of each row (of a gradient): the rate at which a unit step in this norm changes a loss."""

    @abc.abstractmethod
    def project(self, flat, radius):
        """Each row projected onto the ball of this norm with that row's ``radius`` (B,)."""

    @abc.abstractmethod
    def shrink(self, flat, fraction):
        """Each row moved towards zero: ``fraction`` (B,) 1 keeps it, 0 gives zero (for a perturbation
        of pixels in [0, 1]); the norm never grows as ``fraction`` falls."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class L2(Norm):
    """Euclidean norm; its penalty is ``sum(noise^2) / 2``: small, spread-out noise."""

    name = "l2"

    def penalty(self, noise):
        return tf1().nn.l2_loss(noise)

    def penalty_value(self, noise: np.ndarray) -> float:
        return float((np.asarray(noise, np.float64) ** 2).sum() / 2)

    def measure(self, delta: np.ndarray) -> np.ndarray:
        flat = np.asarray(delta, np.float32).reshape(len(delta), -1)
        return np.sqrt((flat ** 2).sum(1))

    def size(self, flat):
        return tf1().norm(flat, axis=1)

    dual_size = size

    def project(self, flat, radius):
        tf = tf1()
        size = self.size(flat)
        scale = tf.where(size > radius, radius / tf.maximum(size, 1e-12), tf.ones_like(size))
        return flat * scale[:, None]

    def shrink(self, flat, fraction):
        return flat * fraction[:, None]


class L1(Norm):
    """Sum of absolute values; as a penalty it gives sparse noise with a few strong pixels."""

    name = "l1"

    def penalty(self, noise):
        tf = tf1()
        return tf.reduce_sum(tf.abs(noise))

    def penalty_value(self, noise: np.ndarray) -> float:
        return float(np.abs(np.asarray(noise, np.float64)).sum())

    def measure(self, delta: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(delta, np.float32).reshape(len(delta), -1)).sum(1)

    def size(self, flat):
        tf = tf1()
        return tf.reduce_sum(tf.abs(flat), axis=1)

    def dual_size(self, flat):
        tf = tf1()
        return tf.reduce_max(tf.abs(flat), axis=1)

    def project(self, flat, radius):
        """Euclidean projection onto the L1 ball (Duchi et al. 2008, the sort-based form), row by row."""
        tf = tf1()
        magnitude = tf.abs(flat)
        ordered = tf.sort(magnitude, axis=1, direction="DESCENDING")
        cumulative = tf.cumsum(ordered, axis=1)
        count = tf.cast(tf.range(1, tf.shape(flat)[1] + 1), flat.dtype)[None, :]
        kept = tf.cast(ordered * count > cumulative - radius[:, None], tf.int32)
        rho = tf.maximum(tf.reduce_sum(kept, axis=1), 1)  # the condition holds for a prefix of the sorted row
        threshold = (tf.gather(cumulative, rho - 1, batch_dims=1) - radius) / tf.cast(rho, flat.dtype)
        projected = tf.sign(flat) * tf.nn.relu(magnitude - threshold[:, None])
        return tf.where(self.size(flat) <= radius, flat, projected)

    def shrink(self, flat, fraction):
        tf = tf1()
        return tf.sign(flat) * tf.nn.relu(tf.abs(flat) - (1.0 - fraction)[:, None])


class Linf(Norm):
    """Largest absolute change of any pixel."""

    name = "linf"

    def measure(self, delta: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(delta, np.float32).reshape(len(delta), -1)).max(1)

    size = L1.dual_size
    dual_size = L1.size

    def project(self, flat, radius):
        tf = tf1()
        return tf.clip_by_value(flat, -radius[:, None], radius[:, None])

    def shrink(self, flat, fraction):
        return self.project(flat, fraction)


NORMS: dict[str, Norm] = {norm.name: norm for norm in (L2(), L1(), Linf())}


def get_norm(name: str) -> Norm:
    if name not in NORMS:
        raise InvalidInput(f"expected a norm in {sorted(NORMS)}, got {name!r}")
    return NORMS[name]


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """The regularization cost of a noise: ``weight * norm.penalty(noise)``; no norm: no cost."""

    norm: Norm | None
    weight: float = 0.0

    def __post_init__(self):
        if not self.weight >= 0:
            raise InvalidInput(f"expected a regularization weight >= 0, got {self.weight}")
        if self.norm is None and self.weight != 0:
            raise InvalidInput(f"expected weight 0 without a norm, got {self.weight}")
        object.__setattr__(self, "weight", float(self.weight))

    @property
    def name(self) -> str:
        return self.norm.name if self.norm is not None else "none"

    @property
    def has_weight(self) -> bool:
        """Whether a weight means anything (``none`` has no weight to sweep)."""
        return self.norm is not None

    def cost(self, noise):
        if self.norm is None:
            return tf1().constant(0.0)
        return self.weight * self.norm.penalty(noise)

    def value(self, noise: np.ndarray) -> float:
        """:meth:`cost` of a NumPy array (for reports)."""
        return 0.0 if self.norm is None else self.weight * self.norm.penalty_value(noise)


REGULARIZER_NAMES = ("l2", "l1", "none")


def make_regularizer(name: str, weight: float = 1e-2) -> Regularizer:
    """``l2`` / ``l1`` with ``weight``, or ``none`` (whose weight is always 0)."""
    if name not in REGULARIZER_NAMES:
        raise InvalidInput(f"expected a regularizer in {list(REGULARIZER_NAMES)}, got {name!r}")
    if name == "none":
        return Regularizer(None, 0.0)
    return Regularizer(get_norm(name), weight)
