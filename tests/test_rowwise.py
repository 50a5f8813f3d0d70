"""An image's logits and input gradient are the same bit for bit whatever the images beside it, on every
instruction set oneDNN may pick (the claim behind chunked attacks and bit-identical shard merges).

oneDNN chooses its kernels at run time from the CPU: ``ONEDNN_MAX_CPU_ISA`` makes it use the
code paths of an older CPU on this one, so the claim is checked for SSE4.1, AVX, AVX2 (e.g. an
AMD EPYC without AVX-512) and AVX-512 wherever this machine has them. Each runs in its own
process (the variable is read once, when oneDNN starts).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from advmnist.model.rowwise import ROW_BLOCK

#: A frozen CNN of the architecture `advmnist train` builds, with random weights; then logits and
#: gradients of every image alone and in batches of other sizes, compared with the batch of 40.
CHECK = r"""
import json, sys
import numpy as np
from advmnist.model.frozen import FrozenModel
from advmnist.tfcompat import tf1

tf = tf1()
rng = np.random.default_rng(0)
graph = tf.Graph()
with graph.as_default():
    image = tf.placeholder(tf.float32, (None, 28, 28), name="input")
    h = tf.reshape(image, [-1, 28, 28, 1])
    for shape in ((3, 3, 1, 32), (3, 3, 32, 64)):
        fan_in = np.prod(shape[:3])
        h = tf.nn.relu(tf.nn.conv2d(h, rng.normal(0, fan_in ** -0.5, shape).astype(np.float32), 1, "VALID")
                       + rng.normal(0, 0.1, shape[3]).astype(np.float32))
    h = tf.reshape(tf.nn.max_pool2d(h, 2, 2, "VALID"), [-1, 9216])
    h = tf.nn.relu(tf.matmul(h, rng.normal(0, 0.01, (9216, 128)).astype(np.float32)) + 0.1)
    logits = tf.identity(tf.matmul(h, rng.normal(0, 0.1, (128, 10)).astype(np.float32)), name="logits")
    tf.nn.softmax(logits, name="prob")
model = FrozenModel(graph.as_graph_def(), {"input": "input:0", "logits": "logits:0", "prob": "prob:0"}, None)
images = rng.random((40, 28, 28)).astype(np.float32)
weights = rng.normal(0, 1, (40, 10)).astype(np.float32)
run = tf.Graph()
with run.as_default():
    x = tf.placeholder(tf.float32, (None, 28, 28))
    w = tf.placeholder(tf.float32, (None, 10))
    out = model.logits(x)
    grad = tf.gradients(tf.reduce_sum(out * w), x)[0]
differ = []
with tf.Session(graph=run) as sess:
    whole = sess.run([out, grad], {x: images, w: weights})
    for count in (1, 2, 3, 5, 8, 13, 16, 17, 33):
        for start in (0, 40 - count):
            rows = slice(start, start + count)
            part = sess.run([out, grad], {x: images[rows], w: weights[rows]})
            if not all(np.array_equal(p, q[rows]) for p, q in zip(part, whole)):
                differ.append([count, start])
print(json.dumps(differ))
"""


def _isas() -> list[str]:
    flags = set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = {"SSE41": "sse4_1", "AVX": "avx", "AVX2": "avx2", "AVX512_CORE": "avx512bw"}
    return [isa for isa, flag in wanted.items() if flag in flags] or ["DEFAULT"]


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.slow
def test_an_images_logits_and_gradient_do_not_depend_on_its_batch(isa):
    env = dict(os.environ)
    if isa != "DEFAULT":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    differ = json.loads(done.stdout.strip().splitlines()[-1])
    assert differ == [], f"{isa}: (rows, first row) whose values differ from the whole batch: {differ}"


def test_blocks_are_padded_and_cut_back():
    from advmnist.model.rowwise import in_blocks
    from advmnist.tfcompat import tf1

    tf = tf1()
    seen = []
    graph = tf.Graph()
    with graph.as_default():
        rows = tf.placeholder(tf.float32, (None, 3))
        def fn(block):
            seen.append(block.shape.as_list())
            return block * 2.0
        doubled = in_blocks(fn, rows)
        fixed = in_blocks(fn, tf.ones((5, 3)))
    values = np.arange(3 * 37, dtype=np.float32).reshape(37, 3)
    with tf.Session(graph=graph) as sess:
        np.testing.assert_array_equal(sess.run(doubled, {rows: values}), values * 2)
        np.testing.assert_array_equal(sess.run(doubled, {rows: values[:0]}), values[:0])
        np.testing.assert_array_equal(sess.run(fixed), np.full((5, 3), 2.0, np.float32))
    assert seen == [[ROW_BLOCK, 3], [ROW_BLOCK, 3]]  # the function only ever sees whole blocks
