"""advmnist: fool a small MNIST CNN with adversarial noise, and defend it.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` so that tensorpack's layers,
which need the legacy Keras (tf-keras), work on TensorFlow 2. TensorFlow itself is
only imported on demand through :func:`advmnist.tfcompat.tf1`.
"""
import os

# tensorpack 0.11 builds its layers on tf.layers / tf.keras 2: must be set before
# TensorFlow is first imported anywhere in the process.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
