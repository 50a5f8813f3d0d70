"""What a defence trains on: the attack inside the training graph, the loss, and the eps schedule.

- :func:`ball_attack`: the training attack, a random start in the L-infinity ball then
  signed gradient steps, each followed by the projection onto the ball and onto [0, 1].
  Madry et al. (2018) start uniformly in the ball and ascend the cross-entropy; Wong et
  al. (2020, "Fast is better than free") take one such step of 1.25 eps (FGSM with a
  random start); Zhang et al. (2019, TRADES) start 0.001 N(0, 1) away from the image and
  ascend KL(f(x) || f(x')).
- :func:`trades_loss`: CE(f(x), y) + beta KL(f(x) || f(x')), both averaged over the batch.
- :func:`ramped_eps`: the budget of a training step during a linear ramp-up.

Every random draw here is a stateless op of a seed tensor, so a training step draws the
same numbers whenever it is run (an interrupted training resumes with them).
"""
from __future__ import annotations

from advmnist.attacks.base import row_cross_entropy, row_log_softmax
from advmnist.tfcompat import tf1

#: The outer loss: cross-entropy on the attack's examples (Madry et al.), or TRADES's.
LOSSES = ("pgd", "trades")
#: The training attack: PGD with ``pgd_steps`` steps, or one FGSM step from a random start (Wong et al.).
ATTACKS = ("pgd", "fgsm-rs")
#: Wong et al.'s FGSM step, relative to eps.
FGSM_RS_STEP = 1.25
#: The PGD step relative to eps is this over the number of steps (the steps can cross the ball 1.25 times).
PGD_STEP_SPAN = 2.5
#: TRADES's start: this times a standard normal draw, per pixel (Zhang et al.).
TRADES_START = 0.001


def default_step_size(attack: str, pgd_steps: int) -> float:
    """The step relative to eps: 1.25 for FGSM with a random start, else 2.5 / steps."""
    return FGSM_RS_STEP if attack == "fgsm-rs" else PGD_STEP_SPAN / pgd_steps


def ramped_eps(eps: float, step: int, ramp_steps: int) -> float:
    """The budget of training step ``step`` (0-based): it rises linearly over the first ``ramp_steps`` steps,
    ``eps / ramp_steps`` at the first, and is exactly ``eps`` from step ``ramp_steps - 1`` on (0: no ramp)."""
    if ramp_steps <= 0 or step + 1 >= ramp_steps:
        return float(eps)
    return float(eps) * (step + 1) / ramp_steps


def row_kl_divergence(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) of each row, in nats."""
    tf = tf1()
    log_p, log_q = row_log_softmax(p_logits), row_log_softmax(q_logits)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=1)


def trades_loss(clean_logits, adversarial_logits, labels, beta: float):
    """Zhang et al.'s loss: mean CE(f(x), y) + beta * mean KL(f(x) || f(x')); gradients flow through both."""
    tf = tf1()
    natural = tf.reduce_mean(row_cross_entropy(clean_logits, labels))
    return natural + beta * tf.reduce_mean(row_kl_divergence(clean_logits, adversarial_logits))


def ball_attack(logits_fn, images, labels, *, eps, step, steps: int, objective: str, start: str, seed):
    """Adversarial images within ``eps`` (L-infinity) of ``images`` and in [0, 1], without gradient.

    Args:
        logits_fn: images -> logits of the network attacked (as it is now, without dropout).
        eps, step: scalar tensors (or floats): the budget and the absolute size of a signed step.
        steps: the number of steps (a Python int).
        objective: ``ce``, the cross-entropy of ``labels``, or ``kl``, KL(f(x) || f(x')) (TRADES).
        start: ``uniform`` in the ball, or ``normal`` (TRADES's 0.001 N(0, 1)).
        seed: a (2,) integer tensor for the stateless draw of the start.
    """
    tf = tf1()
    if objective not in ("ce", "kl") or start not in ("uniform", "normal"):
        raise ValueError(f"expected objective ce or kl and start uniform or normal, got {objective}, {start}")
    shape = tf.shape(images)
    if start == "uniform":
        noise = eps * (2.0 * tf.random.stateless_uniform(shape, seed=seed) - 1.0)
    else:
        noise = TRADES_START * tf.random.stateless_normal(shape, seed=seed)
    clean = tf.stop_gradient(logits_fn(images)) if objective == "kl" else None

    def project(delta):
        return tf.clip_by_value(images + tf.clip_by_value(delta, -eps, eps), 0.0, 1.0) - images

    def body(i, delta):
        logits = logits_fn(images + delta)
        per_row = row_kl_divergence(clean, logits) if objective == "kl" else row_cross_entropy(logits, labels)
        (gradient,) = tf.gradients(tf.reduce_sum(per_row), [delta])
        return i + 1, project(delta + step * tf.sign(gradient))

    _, delta = tf.while_loop(lambda i, _: i < steps, body, [tf.constant(0), project(noise)],
                             parallel_iterations=1, name="ball_attack_steps")
    return images + tf.stop_gradient(delta)
