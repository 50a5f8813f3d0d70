"""Row-wise computation: what the network computes for one image never depends on the images beside it.

An attack's result for an image must be the same whether it is attacked alone, in a
chunk, in one shard (``--shard K/N``) or in the whole run. Float sums are not
associative, so this holds only if every kernel sums an image's numbers in the same
order whatever the batch. Two kinds of kernel do not:

- matrix products (oneDNN's ``sgemm`` on the CPU): the kernel, its blocking and the
  split of the work over threads are chosen from the matrix sizes, the batch among
  them. On CPUs without AVX-512 (measured with ``ONEDNN_MAX_CPU_ISA=AVX2``) a dense
  layer's output for one row differs in the last bit between 3 and 8 rows; with
  AVX-512 a single row (the matrix-vector path) differs from a batch;
- the softmax: TensorFlow's CPU kernel takes the (N, 10) logits as one flat buffer in
  SIMD packets, and the last ``10 N mod 16`` values with scalar code.

The cure is the same for both: every such kernel sees the same shape every time. The
network runs on blocks of exactly :data:`ROW_BLOCK` rows (:func:`in_blocks`), the rows
padded with zeros to a whole number of blocks, and the softmax on rows padded to a
multiple of :data:`ROW_BLOCK` (:func:`padded_rows`). For a fixed shape a kernel's choices
are fixed, and an image's value does not depend on its place in the block or on the
other rows (checked for SSE4.1, AVX, AVX2 and AVX-512 code paths with 1, 2 and 4
threads; see tests/test_rowwise.py).
"""
from __future__ import annotations

from typing import Callable

from advmnist.tfcompat import tf1

#: Rows per block: the batch every matrix product and softmax of an attack sees.
ROW_BLOCK = 16


def padded_rows(*tensors):
    """The tensors (same first dimension) with zero rows appended up to a multiple of :data:`ROW_BLOCK`."""
    tf = tf1()
    pad = tf.math.floormod(-tf.shape(tensors[0])[0], ROW_BLOCK)
    return [tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1)) for t in tensors]


def in_blocks(fn: Callable, rows, name: str = "rowwise"):
    """``fn(rows)``, computed on blocks of exactly :data:`ROW_BLOCK` rows (one block at a time).

    ``fn`` maps a (ROW_BLOCK, ...) tensor to a (ROW_BLOCK, ...) tensor, row by row (a
    network). Gradients flow through as usual. With at most one block's rows known
    when the graph is built, no loop is needed.
    """
    tf = tf1()
    with tf.name_scope(name):
        count = tf.shape(rows)[0]
        (padded,) = padded_rows(rows)
        block_shape = [ROW_BLOCK] + rows.shape.as_list()[1:]
        rows_known = tf.compat.dimension_value(rows.shape[0])
        if rows_known is not None and rows_known <= ROW_BLOCK:
            return fn(tf.reshape(padded, block_shape))[:count]
        blocks = tf.reshape(padded, [-1] + block_shape)
        out = tf.map_fn(fn, blocks, dtype=rows.dtype, parallel_iterations=1, back_prop=True)
        return tf.reshape(out, [-1] + out.shape.as_list()[2:])[:count]
