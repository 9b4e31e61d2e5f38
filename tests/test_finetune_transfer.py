"""Converted PyTorch weights are worth having: fine-tuning them beats training from scratch.

No real ImageNet ResNet-18 checkpoint can be had offline, so the weights come
from a real pretraining run here: the torchvision-layout reference ResNet-18
(narrowed to width 16 for CPU) trained in PyTorch on scikit-learn's digits
0-4. jaxcls then fine-tunes the converted weights on a small folder of digits
5-9 (15 training images per class, real PNG files), against the same model
from scratch with the same budget.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import datasets

from jaxcls.train import train_and_evaluate

import torch_resnet


def _digits_32():
  digits = datasets.load_digits()
  small = np.round(digits.images * (255 / 16)).astype(np.uint8)
  images = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BILINEAR))
                     for x in small])
  return np.repeat(images[..., None], 3, axis=-1), digits.target


def _pretrain_in_torch(images, labels, path):
  torch.manual_seed(0)
  model = torch_resnet.resnet('resnet18', num_classes=5, width=16)
  x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
  y = torch.from_numpy(labels).long()
  epochs = 25
  optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
  schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs * 15)
  model.train()
  for _ in range(epochs):
    for batch in torch.randperm(len(x))[:15 * 60].split(60):
      optimizer.zero_grad()
      torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
      optimizer.step()
      schedule.step()
  torch.save(model.state_dict(), path)


def _write_folder(root, images, labels, counts=(15, 30)):
  rng = np.random.default_rng(0)
  for label in np.unique(labels):
    indices = rng.permutation(np.flatnonzero(labels == label))
    parts = {'train': indices[:counts[0]], 'val': indices[counts[0]:sum(counts)],
             'test': indices[sum(counts):]}
    for split, chosen in parts.items():
      (root / split / str(label)).mkdir(parents=True)
      for i in chosen:
        Image.fromarray(images[i]).save(root / split / str(label) / f'{i}.png')


@pytest.mark.slow
def test_pretrained_resnet18_fine_tunes_better_than_scratch(tmp_path, config):
  images, labels = _digits_32()
  source = labels < 5
  _pretrain_in_torch(images[source], labels[source], tmp_path / 'resnet18_digits04.pth')
  _write_folder(tmp_path / 'digits59', images[~source], labels[~source])

  config.data.source = f'folder:{tmp_path / "digits59"}'
  config.data.image_size = 32
  config.data.mean, config.data.std = (0.5,) * 3, (0.25,) * 3
  config.model.name = 'resnet18'
  config.model.width = 16
  config.train.num_epochs = 10
  config.train.batch_size = 25
  config.optimizer.learning_rate = 0.02
  config.optimizer.warmup_epochs = 0
  scratch = train_and_evaluate(config, str(tmp_path / 'scratch'))
  config.model.pretrained = str(tmp_path / 'resnet18_digits04.pth')
  finetuned = train_and_evaluate(config, str(tmp_path / 'finetuned'))
  print(f"test accuracy: fine-tuned {finetuned['test']['accuracy']:.4f}, "
        f"scratch {scratch['test']['accuracy']:.4f}")
  assert finetuned['num_examples']['train'] == scratch['num_examples']['train'] == 75
  assert finetuned['test']['accuracy'] > scratch['test']['accuracy'] + 0.05
