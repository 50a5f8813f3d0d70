"""advmnist: fool a small MNIST CNN with adversarial noise, and defend it.

Importing the package changes nothing global. The first call that needs TensorFlow
(through :func:`advmnist.tfcompat.tf1`) imports it in graph mode
(``tf.compat.v1.disable_v2_behavior()``, for the whole process) with the legacy Keras
that tensorpack's layers need (``TF_USE_LEGACY_KERAS=1``, set before TensorFlow is
imported). In a notebook that also uses TensorFlow 2's eager mode or Keras 3, run
advmnist in its own kernel or process.
"""

__version__ = "0.1.0"
