"""A per-image defence: adversarial training against PGD (Madry et al. 2018), from a trained run.

Every training batch is replaced by PGD examples against the network as it is at that
step: a random start in the L-infinity ball of radius ``eps``, ``pgd_steps`` signed
steps of ``2.5 * eps / pgd_steps``, projection onto the ball and onto [0, 1], all inside
the training graph (the attack sees the network without dropout, the training step
with it). A fraction ``clean_fraction`` of each batch stays clean. The network's
variables are restored from the run's checkpoint and trained with Adam; after every
epoch the clean test accuracy and the robust accuracy of ``monitor`` test images under
the training attack are logged. The result is saved as a new run by the run layer,
like the universal immunization.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from advmnist.attacks.base import progress_bar
from advmnist.data import IMAGE_SIZE, Split
from advmnist.errors import InvalidInput
from advmnist.immunize import Augmenter, RestoredNetwork, check_training_options
from advmnist.model import cnn_logits, network_variables
from advmnist.tfcompat import tf1


@dataclasses.dataclass(frozen=True)
class PGDTrainingSettings:
    eps: float = 0.1
    epochs: float = 3.0
    batch_size: int = 128
    lr: float = 1e-3
    pgd_steps: int = 7
    clean_fraction: float = 0.0
    monitor: int = 500
    seed: int = 0
    #: training images moved by up to this many pixels before the attack, as ``train`` does
    shift: int = 2
    #: ``auto``, ``fp32`` or ``bf16``, as for ``train``
    precision: str = "auto"

    def __post_init__(self):
        if not 0 < self.eps <= 1:
            raise InvalidInput(f"expected 0 < eps <= 1, got {self.eps}")
        if not self.epochs > 0 or self.batch_size < 1 or self.pgd_steps < 1 or not self.lr > 0:
            raise InvalidInput(f"expected epochs, lr > 0 and batch size, PGD steps >= 1, got {self.epochs}, "
                               f"{self.lr}, {self.batch_size}, {self.pgd_steps}")
        if not 0 <= self.clean_fraction < 1:
            raise InvalidInput(f"expected a clean fraction in [0, 1), got {self.clean_fraction}")
        check_training_options(self.shift, self.precision)

    def file_stem(self) -> str:
        return f"immunize_pgd_eps{self.eps:g}"


@dataclasses.dataclass
class PGDTrainingResult:
    clean_before: float
    robust_before: float          # on ``monitor`` test images, under the training attack
    history: list[dict]           # one entry per epoch
    clean_after: float
    robust_after: float
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PGDTrainer(RestoredNetwork):
    """The run's network in a session, trained on PGD examples against itself. Use as a context manager."""

    def __init__(self, checkpoint: str, settings: PGDTrainingSettings):
        tf = tf1()
        self.settings = settings
        self.graph = tf.Graph()
        eps, steps = settings.eps, settings.pgd_steps
        with self.graph.as_default():
            tf.set_random_seed(settings.seed)
            self.images = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))
            self.labels = tf.placeholder(tf.int32, (None,))
            self.attacked = tf.placeholder(tf.bool, (None,))  # which images of the batch get the attack
            with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
                def evaluated(x):
                    return cnn_logits(x, training=False)

                start = tf.random.uniform(tf.shape(self.images), -eps, eps)
                delta = tf.clip_by_value(self.images + start, 0.0, 1.0) - self.images

                def body(i, delta):
                    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=self.labels, logits=evaluated(self.images + delta)))
                    (gradient,) = tf.gradients(loss, [delta])
                    moved = tf.clip_by_value(delta + 2.5 * eps / steps * tf.sign(gradient), -eps, eps)
                    return i + 1, tf.clip_by_value(self.images + moved, 0.0, 1.0) - self.images

                _, delta = tf.while_loop(lambda i, _: i < steps, body, [tf.constant(0), delta],
                                         parallel_iterations=1, name="pgd_steps")
                delta = tf.stop_gradient(delta) * tf.cast(self.attacked, tf.float32)[:, None, None]
                self.adversarial = self.images + delta
                network_vars = network_variables(tf.global_variables())
                logits = cnn_logits(self.adversarial, training=True)
                self.predictions = tf.argmax(evaluated(self.images), 1, output_type=tf.int32)
                self.adversarial_predictions = tf.argmax(evaluated(self.adversarial), 1, output_type=tf.int32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.labels, logits=logits))
            self.learning_rate = tf.placeholder(tf.float32, ())
            self.train_step = tf.train.AdamOptimizer(self.learning_rate).minimize(loss, var_list=network_vars)
            restore = tf.train.Saver(network_vars)
            self.saver = tf.train.Saver(network_vars, max_to_keep=1)
            init = tf.global_variables_initializer()
        self._open_session(init, restore, checkpoint, settings.precision)

    def accuracy(self, split: Split, *, attacked: bool, count: int | None = None, batch: int = 500) -> float:
        """Test accuracy, clean or under the training attack, on the first ``count`` images."""
        images, labels = split.images[:count], split.labels[:count]
        fetch = self.adversarial_predictions if attacked else self.predictions
        correct = 0
        for i in range(0, len(images), batch):
            part = slice(i, i + batch)
            predicted = self.sess.run(fetch, {self.images: images[part], self.labels: labels[part].astype(np.int32),
                                              self.attacked: np.full(len(images[part]), attacked)})
            correct += int((predicted == labels[part]).sum())
        return correct / max(len(images), 1)

    def run(self, train: Split, test: Split, *, progress: bool = False,
            log: Callable[[str], None] = lambda message: None) -> PGDTrainingResult:
        """Train for ``settings.epochs`` epochs (the learning rate falls by a cosine to 1 % of its start)."""
        s = self.settings
        started = time.time()
        rng = np.random.default_rng(s.seed)
        augment = Augmenter(s.shift, s.seed)
        clean_before = self.accuracy(test, attacked=False)
        robust_before = self.accuracy(test, attacked=True, count=s.monitor)
        log(f"before: clean {clean_before:.2%}, under the training PGD (eps {s.eps:g}, {s.pgd_steps} steps, "
            f"first {s.monitor} test images) {robust_before:.2%}")
        per_epoch = len(train.images) // s.batch_size
        total = int(round(s.epochs * per_epoch))
        history = []
        step = 0
        with progress_bar(total, f"PGD training, eps {s.eps:g}", progress) as bar:
            while step < total:
                order = rng.permutation(len(train.images))
                for k in range(per_epoch):
                    if step >= total:
                        break
                    batch = order[k * s.batch_size:(k + 1) * s.batch_size]
                    lr = s.lr * (0.01 + 0.99 * (1 + np.cos(np.pi * step / total)) / 2)
                    self.sess.run(self.train_step, {
                        self.images: augment(train.images[batch]), self.labels: train.labels[batch].astype(np.int32),
                        self.attacked: rng.random(len(batch)) >= s.clean_fraction, self.learning_rate: lr})
                    step += 1
                    bar.update(1)
                    if step % per_epoch == 0 or step == total:
                        entry = {"epoch": round(step / per_epoch, 2),
                                 "clean_accuracy": self.accuracy(test, attacked=False),
                                 "robust_accuracy": self.accuracy(test, attacked=True, count=s.monitor),
                                 "seconds": round(time.time() - started, 1)}
                        history.append(entry)
                        log(f"epoch {entry['epoch']:g}: clean {entry['clean_accuracy']:.2%}, under the training "
                            f"PGD {entry['robust_accuracy']:.2%} ({entry['seconds']:.0f} s)")
        last = history[-1]
        return PGDTrainingResult(clean_before=clean_before, robust_before=robust_before, history=history,
                                 clean_after=last["clean_accuracy"], robust_after=last["robust_accuracy"],
                                 seconds=round(time.time() - started, 1))


class PGDTrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during PGD training: the network as it was is saved in ``saved_to`` (marked interrupted)."""

    def __init__(self, saved_to):
        super().__init__("PGD training interrupted")
        self.saved_to = saved_to


def train_against_pgd(model, train: Split, test: Split, settings: PGDTrainingSettings, *, out_dir,
                      progress: bool = False, log: Callable[[str], None] = lambda message: None) -> PGDTrainingResult:
    """Adversarially train ``model``'s run against PGD and save the network as a new run in ``out_dir``."""
    from advmnist.fileio import display_path
    from advmnist.immunize import checkpoint_of
    from advmnist.runs import save_trained

    checkpoint = checkpoint_of(model)
    meta = {"immunized_against": "pgd", "eps": settings.eps, "epochs": settings.epochs,
            "pgd_steps": settings.pgd_steps, "clean_fraction": settings.clean_fraction, "seed": settings.seed,
            "shift": settings.shift, "base_model": display_path(model.path)}
    with PGDTrainer(checkpoint, settings) as trainer:
        meta["precision"] = trainer.precision
        try:
            result = trainer.run(train, test, progress=progress, log=log)
        except KeyboardInterrupt:
            save_trained(trainer.saver, trainer.sess, out_dir, "model-pgd", interrupted=True, **meta)
            raise PGDTrainingInterrupted(out_dir) from None
        save_trained(trainer.saver, trainer.sess, out_dir, "model-pgd", test_accuracy=result.clean_after, **meta)
    return result
