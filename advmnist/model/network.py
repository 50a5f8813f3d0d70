"""The CNN of the reference experiment, as a tensorpack ``ModelDesc``.

input 28x28 in [0, 1] -> conv 32 3x3 ReLU -> conv 64 3x3 ReLU -> max-pool 2 -> dropout 0.25
-> fully connected 128 ReLU -> dropout 0.5 -> fully connected 10 (``logits``) -> softmax (``prob``).

The layer stack lives in :func:`cnn_logits` so that training, the frozen inference
graph and adversarial training build exactly the same variables.
"""
from __future__ import annotations

from advmnist.data.mnist import IMAGE_SIZE, NUM_CLASSES
from advmnist.tfcompat import load_tensorpack, tf1

INPUT_NAME = "input"
LABEL_NAME = "label"
LOGITS_NAME = "logits"
PROB_NAME = "prob"
ACCURACY_NAME = "accuracy"
COST_NAME = "cross_entropy_loss"
#: The variable scopes of the layers that :func:`cnn_logits` creates, input to output.
LAYER_SCOPES = ("conv0", "conv1", "fc0", "fc1")


def network_variables(variables) -> list:
    """The CNN's own variables among ``variables`` (not an optimizer's, not an attack's)."""
    return [v for v in variables if v.name.split("/")[0] in LAYER_SCOPES]


def cnn_logits(image, *, training: bool, dropout_seed=None):
    """Logits of the CNN for ``image`` of shape (N, 28, 28), values in [0, 1].

    ``training`` switches dropout on; the variables are created in (or reused from)
    the current variable scope: ``conv0``, ``conv1``, ``fc0``, ``fc1``. With
    ``dropout_seed`` (a (2,) integer tensor) the dropout masks are stateless draws from
    it, the same whenever the step is run again (a resumed training); without, they come
    from tensorpack's ``Dropout`` (TensorFlow's stateful random stream).
    """
    tf = tf1()
    load_tensorpack()
    from tensorpack.models import Conv2D, Dropout, FullyConnected, MaxPooling
    from tensorpack.tfutils.argscope import argscope

    conv0, conv1, fc0, fc1 = LAYER_SCOPES
    x = tf.expand_dims(image, -1)  # NHWC with one channel
    with argscope(Conv2D, kernel_size=3, padding="valid", activation=tf.nn.relu):
        x = Conv2D(conv0, x, 32)
        x = Conv2D(conv1, x, 64)
    x = MaxPooling("pool0", x, 2)

    def dropout(name, x, rate, key):
        if dropout_seed is None or not training:
            return Dropout(name, x, rate=rate, training=training)
        seed = tf.random.experimental.stateless_fold_in(dropout_seed, key)
        return tf.nn.experimental.stateless_dropout(x, rate, seed, name=name)

    x = dropout("drop0", x, 0.25, 0)
    x = FullyConnected(fc0, x, 128, activation=tf.nn.relu)
    x = dropout("drop1", x, 0.5, 1)
    return FullyConnected(fc1, x, NUM_CLASSES)


#: Suffix of the moving averages of the weights in a checkpoint (TensorFlow's default name).
AVERAGE_SUFFIX = "ExponentialMovingAverage"


def averaging_optimizer(opt, decay: float):
    """``opt``, followed at every step by an exponential moving average of the weights it updates.

    The averages (``<variable>/ExponentialMovingAverage``) are saved with the checkpoints
    and are what :func:`advmnist.model.freezing.inference_graph_def` freezes. Early on the
    average uses TensorFlow's ramp ``min(decay, (1 + step) / (10 + step))``, so the
    first steps' random weights are soon forgotten.
    """
    tf = tf1()
    load_tensorpack()
    from tensorpack.tfutils.common import get_global_step_var
    from tensorpack.tfutils.optimizer import ProxyOptimizer

    class AveragingOptimizer(ProxyOptimizer):
        def apply_gradients(self, grads_and_vars, global_step=None, name=None):
            grads_and_vars = list(grads_and_vars)
            update = self._opt.apply_gradients(grads_and_vars, global_step=global_step, name=name)
            average = tf.train.ExponentialMovingAverage(decay, num_updates=get_global_step_var(),
                                                        name=AVERAGE_SUFFIX)
            with tf.control_dependencies([update]):
                return average.apply([v for _, v in grads_and_vars])

    return AveragingOptimizer(opt, "AveragingOptimizer")


def per_tower_optimizer(make):
    """An optimizer of its own (``make()``) for each tower of a data-parallel trainer.

    tensorpack's replicated trainer applies the averaged gradients once per tower with
    the model's one optimizer. Adam's step counters (``beta1_power``, ``beta2_power``)
    belong to the optimizer, not to a variable: shared by two towers they advance twice
    a step, and the towers' copies of the network drift apart. With one Adam per tower
    every copy takes the same step. With one tower this is ``make()`` itself.
    """
    load_tensorpack()
    from tensorpack.tfutils.optimizer import ProxyOptimizer

    class PerTowerOptimizer(ProxyOptimizer):
        def __init__(self):
            super().__init__(make(), "PerTowerOptimizer")
            self._towers = {"": self._opt}

        def apply_gradients(self, grads_and_vars, global_step=None, name=None):
            grads_and_vars = list(grads_and_vars)
            first = grads_and_vars[0][1].op.name.split("/")[0]
            tower = first if first.startswith("tower") else ""  # tower 0's variables have no prefix
            if tower not in self._towers:
                self._towers[tower] = make()
            return self._towers[tower].apply_gradients(grads_and_vars, global_step=global_step, name=name)

    return PerTowerOptimizer()


def make_model(learning_rate: float = 1e-3, average_decay: float | None = None):
    """Return a tensorpack ``ModelDesc`` instance for the CNN.

    With ``average_decay``, the optimizer also keeps a moving average of the weights
    (:func:`averaging_optimizer`).
    """
    tf = tf1()
    load_tensorpack()
    from tensorpack import ModelDesc
    from tensorpack.tfutils.summary import add_moving_summary
    from tensorpack.tfutils.tower import get_current_tower_context

    class MnistCNN(ModelDesc):
        def inputs(self):
            return [tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE), tf.float32, INPUT_NAME),
                    tf.TensorSpec((None,), tf.int32, LABEL_NAME)]

        def build_graph(self, image, label):
            training = get_current_tower_context().is_training
            logits = tf.identity(cnn_logits(image, training=training), name=LOGITS_NAME)
            tf.nn.softmax(logits, name=PROB_NAME)
            cost = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits),
                name=COST_NAME)
            correct = tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), label), tf.float32)
            accuracy = tf.reduce_mean(correct, name=ACCURACY_NAME)
            add_moving_summary(cost, accuracy)
            return cost

        def optimizer(self):
            lr = tf.get_variable("learning_rate", initializer=float(learning_rate), trainable=False)
            tf.summary.scalar("learning_rate", lr)
            opt = per_tower_optimizer(lambda: tf.train.AdamOptimizer(lr))
            return averaging_optimizer(opt, average_decay) if average_decay else opt

    return MnistCNN()
