"""RAPL's backbone: torchvision's ResNet-18, its weights, and pre-training on task frames.

RAPL's encoder is a pre-trained ResNet-18 (frozen) with a trainable linear head. The network
is ``torchvision.models.resnet18`` (the ``rapl`` extra installs torchvision); its ImageNet
classifier ``fc`` is dropped after the weights are loaded, so the backbone returns the pooled
512-d feature. :func:`load_backbone` reads a file a user saved with
``torch.save(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(), path)`` on a
machine with internet (nothing is ever downloaded here).

Without such a file, :func:`pretrain_backbone` pre-trains one here, self-supervised, on
frames of the task rendered from random-action episodes. The method is chosen to be cheap on
a CPU, where back-propagating through the whole network for thousands of frames takes
hours:

1. BatchNorm statistics: torchvision's random initialization, then every BatchNorm layer's
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
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn

from pbrl.errors import ConfigError
from pbrl.rewards.base import save_atomically

log = logging.getLogger("pbrl")

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's weights expect this normalization
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 512
_OPS_STUB: list[torch.library.Library] = []  # keeps the stub op library below alive


def import_torchvision(
    hint: str = "RAPL's backbone is torchvision's ResNet-18: pip install -e '.[rapl]' "
    "(torchvision matching your torch)",
) -> ModuleType:
    """``import torchvision``, or a ConfigError with ``hint`` (how to install it).

    A torchvision wheel whose compiled ops do not load beside the installed torch (say the
    CUDA wheel beside a CPU-only torch of the same release) fails on import at two op
    registrations that torchvision does not guard (``nms``, ``qnms``). Neither ResNet-18 nor
    open_clip's models use its compiled ops, so their schemas are declared here and the
    import tried once more."""
    try:
        import torchvision
    except ImportError:
        raise ConfigError(hint) from None
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _OPS_STUB.append(lib)
        log.debug("torchvision's compiled ops do not load beside this torch; its models need none")
        import torchvision
    return torchvision


def resnet18() -> nn.Module:
    """``torchvision.models.resnet18()`` with torchvision's random initialization (``fc``, the
    ImageNet classifier, still in place: checkpoints carry it)."""
    return cast(nn.Module, import_torchvision().models.resnet18(weights=None))


class _ResNetLayers(Protocol):
    """The layers of torchvision's ``ResNet`` that are reached by name here."""

    conv1: nn.Module
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    avgpool: nn.Module
    fc: nn.Module


def drop_classifier(net: nn.Module) -> nn.Module:
    """The network returns the pooled 512-d feature: ``fc`` becomes the identity."""
    cast(_ResNetLayers, net).fc = nn.Identity()
    return net


def stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Everything below ``layer4``: ``[B, 3, H, W]`` -> ``[B, 256, H/16, W/16]``."""
    n = cast(_ResNetLayers, net)
    x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
    return cast(torch.Tensor, n.layer3(n.layer2(n.layer1(x))))


def top(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``layer4`` and the average pool: ``[B, 256, h, w]`` -> ``[B, 512]``."""
    n = cast(_ResNetLayers, net)
    return cast(torch.Tensor, n.avgpool(n.layer4(h)).flatten(1))


class BackboneError(ConfigError):
    """A backbone weights file that does not exist or does not fit ResNet-18."""


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


def _state_dict_of(blob: object, path: Path) -> dict[str, torch.Tensor]:
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


def load_backbone(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, object]]:
    """torchvision's ResNet-18 with the weights in ``path`` (a torchvision ``state_dict``, or a
    backbone pre-trained by pbrl), its classifier dropped, and the record of where it came
    from."""
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
            f"reward.backbone_weights={path}: cannot be read as a torch checkpoint "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    state = _state_dict_of(blob, p)
    net = resnet18()
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
    drop_classifier(net)
    info: dict[str, object] = {
        "source": "file",
        "network": "torchvision.models.resnet18",
        "path": str(p.resolve()),
        "sha256": file_digest(p),
    }
    if isinstance(blob, dict) and isinstance(blob.get("info"), dict):
        info["pretraining"] = blob["info"]  # how pbrl pre-trained it
    return net, info


def save_backbone(net: nn.Module, info: Mapping[str, object], path: str | os.PathLike[str]) -> Path:
    """Write ``{"backbone": state_dict, "info": info}`` atomically (``net`` with its ``fc``)."""
    return save_atomically({"backbone": net.state_dict(), "info": info}, path)


@torch.no_grad()
def estimate_batchnorm(net: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
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
    return torch.cat([stem(net, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def pretrain_backbone(
    frames: np.ndarray,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, object]]:
    """Self-supervised pre-training on task frames ``[K, S, S, 3]`` uint8 (see the module
    docstring): BatchNorm statistics, then ``steps`` autoencoder steps on ``layer4``."""
    if len(frames) < 2:
        raise ValueError("pre-training needs at least 2 frames")
    started = time.time()
    torch.manual_seed(seed)
    net = resnet18()
    # Module.to documents memory_format, but its typed overloads leave it out.
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = normalize_frames(torch.as_tensor(frames))
    below = estimate_batchnorm(net, x)
    pixels = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    thumbs = nn.functional.adaptive_avg_pool2d(pixels, 28)  # [K, 3, 28, 28]
    decoder = nn.Linear(FEATURE_DIM, thumbs[0].numel())
    params = [*cast(_ResNetLayers, net).layer4.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    gen = torch.Generator().manual_seed(seed)
    cast(_ResNetLayers, net).layer4.train()
    loss_v = float("nan")
    first_loss = float("nan")
    for step in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        recon = torch.sigmoid(decoder(top(net, below[rows]))).view_as(thumbs[rows])
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
        "network": "torchvision.models.resnet18",
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
