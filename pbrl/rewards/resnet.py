"""ResNet-18 in plain torch, with torchvision's ``state_dict`` layout, and its weights.

RAPL's encoder is a pre-trained ResNet-18 (frozen) with a trainable linear head. torchvision
is not needed: :class:`ResNet18` has exactly the parameter and buffer names and shapes of
``torchvision.models.resnet18()`` (``conv1``, ``bn1``, ``layer1.0.conv1`` ...
``layer4.1.bn2``, ``fc``), so a checkpoint a user saved with
``torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)`` loads as it is
(:func:`load_backbone`). Nothing is ever downloaded.

Without such a file, :func:`pretrain_backbone` pre-trains one here, self-supervised, on
frames of the task rendered from random-action episodes. The method is chosen to be cheap on
a CPU, where back-propagating through the whole network for thousands of frames takes
hours:

1. BatchNorm statistics: random initialization (torchvision's), then every BatchNorm layer's
   running mean and variance estimated on the task's frames (one forward pass);
2. the last stage (``layer4``, 8.4M of the 11.2M weights) trained as the encoder of an
   autoencoder: from the pooled 512-d feature, a linear decoder reconstructs a 28 x 28
   thumbnail of the frame (mean squared error). The stages below it stay at their random
   initialization, so their outputs are computed once per frame and the training steps cost
   only ``layer4``'s forward and backward passes.

The pooled feature then has to carry where things are in the frame (the decoder needs it);
``docs/rapl.md`` gives the measured effect. A backbone pre-trained here is saved with a
description of how it was made, which every result records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pbrl.errors import ConfigError
from pbrl.rewards.base import save_atomically

log = logging.getLogger("pbrl")

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's weights expect this normalization
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 512


class BackboneError(ConfigError):
    """A backbone weights file that does not exist or does not fit ResNet-18."""


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) as torchvision builds it; ``forward`` returns the pooled
    512-d feature (``fc``, the ImageNet classifier, is kept only so that torchvision's
    checkpoints load unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(64, 64, 1)
        self.layer2 = self._stage(64, 128, 2)
        self.layer3 = self._stage(128, 256, 2)
        self.layer4 = self._stage(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, 1000)
        # torchvision's initialization
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Everything below ``layer4``: ``[B, 3, H, W]`` -> ``[B, 256, H/16, W/16]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """``layer4`` and the average pool: ``[B, 256, h, w]`` -> ``[B, 512]``."""
        return self.avgpool(self.layer4(h)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` with ImageNet's normalization
    (channels-last memory: the faster convolution layout on CPUs)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def file_digest(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the file's SHA-256 (recorded with every result)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _state_dict_of(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    if isinstance(blob, dict) and "backbone" in blob and isinstance(blob["backbone"], dict):
        blob = blob["backbone"]  # a backbone pre-trained by pbrl
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise BackboneError(
            f"reward.backbone_weights={path}: not a ResNet-18 state_dict (save one with "
            "torch.save(torchvision.models.resnet18(weights=...).state_dict(), path))"
        )
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_backbone(path: str | os.PathLike[str]) -> tuple[ResNet18, dict[str, Any]]:
    """A ResNet-18 with the weights in ``path`` (torchvision's layout, or a backbone
    pre-trained by pbrl), and the record of where it came from."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneError(
            f"reward.backbone_weights={path}: no such file; give the path of a torchvision "
            "resnet18 state_dict (.pth), or leave it empty to pre-train a backbone here"
        )
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(
            f"reward.backbone_weights={path}: cannot be read as a torch checkpoint ({exc})"
        ) from None
    state = _state_dict_of(blob, p)
    net = ResNet18()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise BackboneError(
            f"reward.backbone_weights={path} does not fit ResNet-18 ({detail}): give a "
            "torchvision resnet18 state_dict"
        )
    net.load_state_dict(state)
    info: dict[str, Any] = {"source": "file", "path": str(p.resolve()), "sha256": file_digest(p)}
    if isinstance(blob, dict) and isinstance(blob.get("info"), dict):
        info["pretraining"] = blob["info"]  # how pbrl pre-trained it
    return net, info


def save_backbone(net: ResNet18, info: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``{"backbone": state_dict, "info": info}`` atomically."""
    return save_atomically({"backbone": net.state_dict(), "info": info}, path)


@torch.no_grad()
def estimate_batchnorm(net: ResNet18, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Every BatchNorm layer's running statistics from frames ``x`` (cumulative averages
    over the batches, weights untouched); returns the stem's outputs on ``x`` (eval mode)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(x), batch_size):
        net(x[i : i + batch_size])
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    net.eval()
    return torch.cat([net.stem(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def pretrain_backbone(
    frames: np.ndarray,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[ResNet18, dict[str, Any]]:
    """Self-supervised pre-training on task frames ``[K, S, S, 3]`` uint8 (see the module
    docstring): BatchNorm statistics, then ``steps`` autoencoder steps on ``layer4``."""
    if len(frames) < 2:
        raise ValueError("pre-training needs at least 2 frames")
    started = time.time()
    torch.manual_seed(seed)
    net = ResNet18()
    cast(Any, net).to(memory_format=torch.channels_last)
    x = normalize_frames(torch.as_tensor(frames))
    stem = estimate_batchnorm(net, x)
    pixels = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    thumbs = nn.functional.adaptive_avg_pool2d(pixels, 28)  # [K, 3, 28, 28]
    decoder = nn.Linear(FEATURE_DIM, thumbs[0].numel())
    params = [*net.layer4.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    gen = torch.Generator().manual_seed(seed)
    net.layer4.train()
    loss_v = float("nan")
    first_loss = float("nan")
    for step in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        recon = torch.sigmoid(decoder(net.head(stem[rows]))).view_as(thumbs[rows])
        loss = nn.functional.mse_loss(recon, thumbs[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_v = float(loss.item())
        if step == 0:
            first_loss = loss_v
        if progress is not None:
            progress(step, loss_v)
    net.eval()
    info = {
        "source": "pretrained here",
        "method": "random init + BatchNorm statistics on task frames + layer4 autoencoder "
        "(linear decoder to a 28x28 thumbnail)",
        "frames": len(frames),
        "steps": int(steps),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        "first_loss": first_loss,
        "final_loss": loss_v,
        "seconds": round(time.time() - started, 1),
    }
    return net, info
