"""The supervised baseline: a small CNN trained from scratch on only the K labeled images
of a draw (the seed compared with a ResNet-18 trained this way; on 28x28 images and a few
labels, a small CNN is the stronger and faster choice)."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.data.loading import to_unit_range


class SmallCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-global average-linear, BatchNorm, dropout."""

    def __init__(self, channels: int, classes: int):
        super().__init__()

        def block(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]

        self.features = nn.Sequential(*block(channels, 32), *block(32, 32), nn.MaxPool2d(2),
                                      *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3))
        self.classify = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def cnn_accuracy(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, *, seed: int, steps: int = 300, batch_size: int = 64) -> float:
    """Train on uint8 `[n, C, H, W]` images with labels 0..K-1 (light shift augmentation),
    return accuracy on the test images."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    model = SmallCNN(train_images.shape[1], classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    x = torch.from_numpy(to_unit_range(train_images))
    y = torch.from_numpy(train_labels).long()
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        batch = torch.roll(x[rows], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(batch), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(torch.from_numpy(to_unit_range(test_images[i:i + 512])))
                            for i in range(0, len(test_images), 512)])
    return float((logits.argmax(1).numpy() == test_labels).mean())
