"""Where a float32 training step goes, and how fast it could get with the same kernels.

Usage::

    python benchmarks/train_step_budget.py                 # batch 128, 4 rounds of 30 steps
    python benchmarks/train_step_budget.py --precision bf16

``benchmarks/train_throughput.py`` compares whole epochs with tf-keras ``model.fit``. This
script looks inside one step: the training step of :func:`advmnist.model.network.cnn_logits` (the
network ``advmnist train`` builds, cross-entropy, Adam 1e-3) on one constant batch, in one
process, without tensorpack around it. It times, in interleaved rounds (medians):

* ``step``: the whole training step, dropout on (what ``train`` runs);
* ``step, no dropout``: the same step with dropout off (not a valid training; a bound:
  what any cheaper dropout could at best save);
* ``kernels only``: the step's convolutions and matrix products alone, forward and the
  gradients a step needs, same shapes (:func:`build_kernels`).

Then TensorFlow's step trace (``RunOptions.FULL_TRACE``, several steps) splits the step into
kernels: convolutions (forward and both gradients), matrix products, dropout, Adam, and the
rest (ReLU / bias / pooling gradients, the loss). Tracing adds a little to every op, so the
trace gives shares (small ops' overstated) and ``ms`` is the share times the untraced step.

The convolutions and matrix products are oneDNN kernels that tf-keras runs too.
``kernels only / step`` is the step's floor if every other kernel (dropout, ReLU, bias,
pooling, loss, Adam) took no time at all: the most any trainer built on these kernels
could gain over this step.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

CATEGORIES = ("convolutions", "matrix products", "dropout", "Adam", "other")


def category(node_name: str, op: str) -> str:
    scope = node_name.split("/")
    if "Conv2D" in op:
        return "convolutions"
    if "MatMul" in op:
        return "matrix products"
    if any(part.startswith("drop") for part in scope):
        return "dropout"
    if scope[0] == "Adam" or op.startswith("ApplyAdam"):
        return "Adam"
    return "other"


def started_session(tf, graph, bfloat16: bool):
    """A session on ``graph`` with advmnist's config (all cores), its variables initialized."""
    from advmnist.tfcompat import session_config

    with graph.as_default():
        init = tf.global_variables_initializer()
    session = tf.Session(graph=graph, config=session_config(tf, bfloat16=bfloat16))
    session.run(init)
    return session


def build_step(tf, images, labels, *, dropout: bool, bfloat16: bool):
    from advmnist.model.network import cnn_logits

    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(0)
        logits = cnn_logits(tf.constant(images), training=dropout)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(labels),
                                                                              logits=logits))
        step = tf.train.AdamOptimizer(1e-3).minimize(loss)
    return started_session(tf, graph, bfloat16), step


def build_kernels(tf, batch: int, *, bfloat16: bool):
    """The step's convolutions and matrix products alone: forward, and the gradients a step needs.

    The same shapes as :func:`advmnist.model.network.cnn_logits` (valid 3x3 convolutions 1->32->64,
    then 9216->128->10), on fixed random inputs; no bias, ReLU, pooling, dropout, loss or Adam.
    The ops are independent, so TensorFlow may run them side by side: a floor, not a step.
    """
    rng = np.random.RandomState(1)
    graph = tf.Graph()
    with graph.as_default():
        def const(*shape):  # a variable, not a constant: grappler would fold constant kernels away
            return tf.Variable(rng.standard_normal(shape).astype(np.float32))

        def conv(x, w, dy, *, input_gradient: bool):
            ops = [tf.nn.conv2d(x, w, [1, 1, 1, 1], "VALID"),
                   tf.nn.conv2d_backprop_filter(x, tf.shape(w), dy, [1, 1, 1, 1], "VALID")]
            if input_gradient:  # the first layer's input is the image: no gradient needed
                ops.append(tf.nn.conv2d_backprop_input(tf.shape(x), w, dy, [1, 1, 1, 1], "VALID"))
            return ops

        def dense(a, w, dz):
            return [tf.matmul(a, w), tf.matmul(dz, w, transpose_b=True), tf.matmul(a, dz, transpose_a=True)]

        ops = (conv(const(batch, 28, 28, 1), const(3, 3, 1, 32), const(batch, 26, 26, 32), input_gradient=False)
               + conv(const(batch, 26, 26, 32), const(3, 3, 32, 64), const(batch, 24, 24, 64), input_gradient=True)
               + dense(const(batch, 9216), const(9216, 128), const(batch, 128))
               + dense(const(batch, 128), const(128, 10), const(batch, 10)))
        # one element of each result is fetched, so nothing is copied out; every kernel still runs whole
        step = tf.add_n([tf.reshape(tf.reduce_sum(tf.slice(op, [0] * op.shape.ndims, [1] * op.shape.ndims)), [])
                         for op in ops])
    return started_session(tf, graph, bfloat16), step


def trace_shares(tf, session, step, steps: int) -> dict[str, float]:
    totals = collections.Counter()
    for _ in range(steps):
        metadata = tf.RunMetadata()
        session.run(step, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                op = node.timeline_label.split("(")[0].split("=")[-1].strip()
                totals[category(node.node_name, op)] += node.all_end_rel_micros
    whole = sum(totals.values())
    return {name: totals[name] / whole for name in CATEGORIES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and variant")
    parser.add_argument("--trace-steps", type=int, default=10, help="traced steps for the kernel shares")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.rounds, args.steps, args.trace_steps) < 1:
        parser.error("expected --batch-size, --rounds, --steps and --trace-steps >= 1")

    from advmnist.tfcompat import tf1

    tf = tf1()
    rng = np.random.RandomState(0)
    images = rng.rand(args.batch_size, 28, 28).astype(np.float32)
    labels = rng.randint(0, 10, args.batch_size).astype(np.int32)
    bfloat16 = args.precision == "bf16"
    variants = {"step": build_step(tf, images, labels, dropout=True, bfloat16=bfloat16),
                "step, no dropout": build_step(tf, images, labels, dropout=False, bfloat16=bfloat16),
                "kernels only": build_kernels(tf, args.batch_size, bfloat16=bfloat16)}
    print(f"training step, batch {args.batch_size}, {args.precision}; {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (session, step) in variants.items():
            for _ in range(3):  # warm-up: oneDNN picks its kernels on the first runs
                session.run(step)
            started = time.perf_counter()
            for _ in range(args.steps):
                session.run(step)
            times[name].append((time.perf_counter() - started) / args.steps * 1000)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:18s} {median[name]:6.1f} ms  (rounds: {' '.join(f'{v:.1f}' for v in values)})")
    print(f"no dropout / step = {median['step, no dropout'] / median['step']:.2f}")
    floor = median["kernels only"] / median["step"]
    print(f"kernels only / step = {floor:.2f}: a trainer on these kernels is at most {1 / floor:.2f}x faster "
          "than this step")

    shares = trace_shares(tf, *variants["step"], args.trace_steps)
    print(f"\nkernels of one step (trace of {args.trace_steps} steps; ms = share x {median['step']:.1f} ms)")
    for name in CATEGORIES:
        print(f"  {name:16s} {shares[name]:6.1%}  {shares[name] * median['step']:6.1f} ms")
    for session, _ in variants.values():
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
