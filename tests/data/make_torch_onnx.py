"""Write ``torch_mnist.onnx`` and ``torch_mnist_outputs.npy``: a PyTorch MNIST network exported to ONNX.

A small convnet (conv 8 3x3, ReLU, batch norm, max-pool 2, dropout, dense 10), trained for
three epochs on the 600 training digits of ``mnist_small.npz`` with torchvision's usual
normalization ((pixel - 0.1307) / 0.3081), input (N, 1, 28, 28), logits out; exported
with a dynamic batch. ``torch_mnist_outputs.npy`` holds PyTorch's own logits on the 300
test digits. tests/test_import.py imports the file (with the ``[onnx]`` extra) and
compares. Needs torch (not a dependency of advmnist)::

    pip install torch onnx && python tests/data/make_torch_onnx.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent
MEAN, STD = 0.1307, 0.3081


def main() -> None:
    torch.manual_seed(0)
    with np.load(HERE / "mnist_small.npz") as small:
        def inputs(name):
            return torch.tensor((small[f"{name}_images"][:, None] / 255.0 - MEAN) / STD, dtype=torch.float32)

        train, labels, test = inputs("train"), torch.tensor(small["train_labels"], dtype=torch.long), inputs("test")
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(8 * 13 * 13, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3):
        for i in range(0, len(train), 32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(train[i:i + 32]), labels[i:i + 32]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        np.save(HERE / "torch_mnist_outputs.npy", net(test).numpy())
    torch.onnx.export(net, test[:1], str(HERE / "torch_mnist.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
