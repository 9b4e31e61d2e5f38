"""Shared helpers of the parity tests: random torch weights, both forwards, the comparison."""

import numpy as np
import torch


def randomize_batch_norm_statistics(module: torch.nn.Module, seed: int = 0) -> None:
  """Non-trivial running statistics, so eval-mode BatchNorm is really tested."""
  generator = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
      m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
      m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
      m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
      m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def torch_logits(module: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  module.eval()
  with torch.no_grad():
    return module(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def flax_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
  model.eval()
  return np.asarray(model(images_nhwc))


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)
