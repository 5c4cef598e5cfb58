"""VDSR in PyTorch, the reference point of `compare_torch.py`.

The same network as `vdsr_jax.models.VDSR` (20 3x3 convolutions, 64 filters,
ReLU, zero padding, global residual) and the same optimiser step as
`vdsr_jax.train` with the default config: loss = MSE, gradient clipped to
global norm theta / lr, then SGD (momentum 0.9, weight decay 1e-4).

Set up to be fast for PyTorch on CPU: 2 intra-op threads (the machine's
cores), channels-last tensors (oneDNN's preferred layout; `channels_last=
False` for NCHW), `torch.inference_mode()` for inference.

Two small differences from the JAX recipe, neither changing the cost:
torch.optim.SGD decays every parameter (the JAX chain decays kernels only)
and scales by lr after the momentum buffer (the JAX chain inside it).
"""

import contextlib
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn


class VDSR(nn.Module):
  """`depth` 3x3 convolutions with ReLU between them, plus the input."""

  def __init__(self, depth: int = 20, features: int = 64):
    super().__init__()
    layers = [nn.Conv2d(1, features, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
      layers += [nn.Conv2d(features, features, 3, padding=1),
                 nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(features, 1, 3, padding=1))
    self.body = nn.Sequential(*layers)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        nn.init.zeros_(m.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.body(x)


def setup(threads: int = 2, seed: int = 0) -> None:
  torch.set_num_threads(threads)
  torch.manual_seed(seed)


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
  return t.contiguous(memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format)


def make_model(channels_last: bool = True, depth: int = 20,
               features: int = 64) -> VDSR:
  model = VDSR(depth, features)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def _autocast(device: str, dtype: Optional[torch.dtype]):
  """bf16/fp16 autocast on `device` ('cpu' or 'cuda'), or nothing."""
  if dtype is None:
    return contextlib.nullcontext()
  return torch.autocast(device_type=device, dtype=dtype)


def make_train_step(model: VDSR, learning_rate: float = 0.1,
                    clip_theta: float = 0.4, momentum: float = 0.9,
                    weight_decay: float = 1e-4,
                    autocast_dtype: Optional[torch.dtype] = None):
  """Returns step(inputs, targets) -> loss: one SGD+clip update in place.

  `autocast_dtype=torch.bfloat16` runs the forward pass (and so its
  backward) under autocast: mixed precision with float32 parameters.
  """
  opt = torch.optim.SGD(model.parameters(), lr=learning_rate,
                        momentum=momentum, weight_decay=weight_decay)
  max_norm = clip_theta / learning_rate
  loss_fn = nn.MSELoss()
  device = next(model.parameters()).device.type

  def step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    with _autocast(device, autocast_dtype):
      out = model(inputs)
    loss = loss_fn(out.float(), targets)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return loss.detach()

  return step


def make_forward(model: VDSR, autocast_dtype: Optional[torch.dtype] = None):
  """Returns forward(x) under inference_mode (and autocast, if given)."""
  model.eval()
  device = next(model.parameters()).device.type

  def forward(x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), _autocast(device, autocast_dtype):
      return model(x)

  return forward


def batch(shape: Tuple[int, int, int, int], channels_last: bool = True,
          seed: int = 0) -> torch.Tensor:
  """A uniform [0, 1) NCHW float32 batch of `shape` = (N, 1, H, W)."""
  x = torch.from_numpy(np.random.default_rng(seed).random(shape, np.float32))
  return _layout(x, channels_last)
