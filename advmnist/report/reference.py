"""The numbers the two reference experiments reported, to stand beside ours.

1. The tensorpack adversarial MNIST experiment (in Chinese; summarized in English by the
   project): a CNN trained with tensorpack to 99.33 % test accuracy, then per-image
   targeted noise towards 9 - d for training images 16..31 under L2, L1 and no
   regularization (weight 1e-2, 6000 Adam steps). Its tables give, per regularizer,
   ``L1Norm`` = sum|noise| / 16, ``L2Norm`` = ||noise||_2 / 16, the mean cross-entropy,
   the regularization cost and the training error (the share not at their target).
2. Hvass-Labs' TensorFlow tutorial #12, "Adversarial Noise for MNIST": one universal
   noise per target class (noise limit 0.35, L2 weight 0.02), and adversarial training
   that makes the network immune to it. The original notebook reported a clean test
   accuracy of 94.2 % (a smaller network than ours), 13.8 % under the target-3 noise,
   93.3 % once immunized against target 3 (measured under the noise of its last training
   phase: the notebook never optimizes a new noise from scratch), and, immunizing target
   after target, earlier immunities lost and clean accuracy down to 87.6 % at the end.
"""
from __future__ import annotations

#: The two experiments, as a reader can look them up.
SOURCES = {
    "targeted": "\u201c\u5728MNIST\u6570\u636e\u96c6\u751f\u6210CNN\u7684\u5bf9\u6297\u6837\u672c\u201d "
                "(adversarial examples of a CNN on MNIST; TensorFlow 1.11 and tensorpack, "
                "https://github.com/tensorpack/tensorpack)",
    "universal": "Hvass-Labs TensorFlow tutorial #12, Adversarial Noise for MNIST, "
                 "https://github.com/Hvass-Labs/TensorFlow-Tutorials (a Chinese translation: "
                 "https://zhuanlan.zhihu.com/p/27399023)",
}

#: Test accuracy of the reference's trained CNN.
TRAIN_ACCURACY = 0.9933

#: The per-image attack, per regularizer: (reached the target of 16, L1Norm, L2Norm,
#: cross_entropy_loss, regularize_cost). For ``none`` the reference logged an L2 cost
#: it did not optimize; the regularization cost in its loss was 0.
ATTACK = {
    "l2": {"success": 16, "L1Norm": 20.069, "L2Norm": 0.39969, "cross_entropy_loss": 0.010374,
           "regularize_cost": 0.20448},
    "l1": {"success": 15, "L1Norm": 8.4974, "L2Norm": 0.54432, "cross_entropy_loss": 0.18368,
           "regularize_cost": 1.3596},
    "none": {"success": 16, "L1Norm": 85.013, "L2Norm": 1.2005, "cross_entropy_loss": 2.1642e-05,
             "regularize_cost": None},
}
#: What a reader needs to know beside a number, by (regularizer, quantity).
NOTES = {("none", "regularize_cost"): "not comparable: the reference logged 1.845, an L2 cost it did not "
                                      "optimize; ours is the cost in the loss"}

#: Hvass-Labs #12 (its network is smaller than ours: compare the shapes of the results).
UNIVERSAL_CLEAN_ACCURACY = 0.942
UNIVERSAL_TARGET3_ACCURACY = 0.138
IMMUNIZED_TARGET3_ACCURACY = 0.933
SEQUENTIAL_ALL_CLEAN_ACCURACY = 0.876


#: The reference experiments' settings, per reproduce step, under our settings' names (what configs/reference-*.toml
#: set): a report marks every setting of ours that differs. ``immunize`` is advmnist's own recipe (fresh noise
#: during training, replay): it differs on purpose and is compared with the reference through ``immunize-reference``.
SETTINGS = {
    "attack": {"steps": 6000, "weight": 0.01, "count": 16, "offset": 16, "split": "train", "target": "9-d"},
    "universal": {"steps": 1000, "noise_limit": 0.35, "l2_weight": 0.02, "lr": 0.01, "batch_size": 64},
    "immunize-reference": {"rounds": 2, "train_steps": 1000, "clean_fraction": 0.5, "refresh_every": 0,
                           "replay": False, "noise.steps": 1000, "noise.noise_limit": 0.35, "noise.l2_weight": 0.02},
}

#: What each measure of the report is, in the reference's own definitions where it has them.
MEASURES = {
    "L1Norm": "the sum of |noise| over all pixels of the 16 images, divided by 16 (the mean L1 norm per image)",
    "L2Norm": "the L2 norm of the 16 images' noise taken together (one vector of 16 x 784 values), divided by 16; "
              "not the mean per-image L2 norm",
    "cross_entropy_loss": "the mean over the 16 images of the cross-entropy between the network's output on "
                          "image + noise and the target class",
    "regularize_cost": "the regularizer's term of the loss: weight x sum|noise| (L1) or weight x sum(noise^2) / 2 "
                       "(L2), at the end of the optimization",
    "images at their target": "of the 16 images, how many the network reads as their target 9 - d (in float; the "
                              "results files also give the count after rounding to 8-bit pixels)",
    "accuracy under a noise": "the share of the 10,000 test images still classified correctly with the noise "
                              "added (clipped to [0, 1])",
}
