"""Report figures, drawn with matplotlib's Agg backend (no display needed).

Each `*_figure` function returns a matplotlib Figure; `save_png` writes it with
a tight bounding box (nothing clipped) and closes it.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # Before pyplot: headless machines have no display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# Past this many classes the confusion matrix cells are too small for numbers.
ANNOTATE_MAX_CLASSES = 20
DPI = 120


def save_png(figure, path: Path) -> None:
  figure.savefig(path, dpi=DPI, bbox_inches='tight', facecolor='white')
  plt.close(figure)


def _shorten(name: str, max_chars: int) -> str:
  # Keeps both ends: class names often differ only in a suffix ('...number 12').
  name = str(name)
  if len(name) <= max_chars:
    return name
  tail = (max_chars - 1) // 2
  return name[:max_chars - 1 - tail] + '…' + name[-tail:]


def confusion_matrix_figure(counts: np.ndarray, class_names: Sequence[str], title: str = ''):
  """Row-normalised confusion matrix (each row: where the examples of one true class went).

  Cell size, font size and label length adapt to the class count so that up to
  ~100 classes stay legible; cells carry percentages only up to
  `ANNOTATE_MAX_CLASSES` classes.
  """
  counts = np.asarray(counts)
  n = len(class_names)
  rows = counts.sum(axis=1, keepdims=True)
  normalised = np.divide(counts, rows, out=np.zeros(counts.shape, np.float64), where=rows > 0)
  cell = float(np.clip(8.0 / n, 0.2, 0.6))  # Inches per cell.
  tick_size = float(np.clip(cell * 72 * 0.55, 5, 10))
  max_chars = 30 if n <= 30 else 20
  side = n * cell
  figure, axes = plt.subplots(figsize=(side + 2.5, side + 1.5))
  image = axes.imshow(normalised, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
  colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
  colorbar.set_label('fraction of the true class', fontsize=10)
  names = [_shorten(name, max_chars) for name in class_names]
  axes.set_xticks(range(n))
  axes.set_yticks(range(n))
  axes.set_xticklabels(names, rotation=90 if n > 10 else 45, ha='center' if n > 10 else 'right',
                       rotation_mode='anchor' if n <= 10 else 'default', fontsize=tick_size)
  axes.set_yticklabels(names, fontsize=tick_size)
  axes.set_xlabel('predicted class', fontsize=11)
  axes.set_ylabel('true class', fontsize=11)
  # Thin grid lines between cells make rows traceable in large matrices.
  axes.set_xticks(np.arange(-0.5, n), minor=True)
  axes.set_yticks(np.arange(-0.5, n), minor=True)
  axes.grid(which='minor', color='#dddddd', linewidth=0.3 if n > 30 else 0.6)
  axes.tick_params(which='minor', length=0)
  if n <= ANNOTATE_MAX_CLASSES:
    text_size = float(np.clip(cell * 72 * 0.3, 6, 10))
    for i in range(n):
      for j in range(n):
        if counts[i, j]:
          value = normalised[i, j]
          axes.text(j, i, f'{100 * value:.0f}' if value < 0.995 else '100', ha='center',
                    va='center', fontsize=text_size,
                    color='white' if value > 0.55 else '#222222')
  accuracy = np.trace(counts) / max(counts.sum(), 1)
  axes.set_title((f'{title}: ' if title else '') + f'confusion matrix, row-normalised'
                 + (' (%)' if n <= ANNOTATE_MAX_CLASSES else '')
                 + f'\naccuracy {100 * accuracy:.2f}% on {int(counts.sum())} examples',
                 fontsize=12)
  return figure


def curves_figure(runs: dict[str, tuple[list[dict], int | None]]):
  """Loss and accuracy per epoch, train (dashed) and validation (solid), best epoch marked.

  `runs`: {label: (history, best_epoch)} with `history` as results.json writes
  it; one label gives plain 'train'/'val' legends, several prefix them.
  """
  figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  single = len(runs) == 1
  max_epoch = 1
  for index, (label, (history, best_epoch)) in enumerate(runs.items()):
    epochs = [h['epoch'] for h in history]
    max_epoch = max([max_epoch] + epochs)
    prefix = '' if single else f'{label} '
    train_color, val_color = ((colors[0], colors[1]) if single else
                              (colors[index % len(colors)],) * 2)
    marker = 'o' if len(epochs) <= 30 else None
    for axes, key in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
      train = [h['train'].get(key, np.nan) for h in history]
      val = [h['val'].get(key, np.nan) for h in history]
      axes.plot(epochs, train, linestyle='--', marker=marker, markersize=3, color=train_color,
                label=f'{prefix}train')
      axes.plot(epochs, val, linestyle='-', marker=marker, markersize=3, color=val_color,
                label=f'{prefix}val')
      if best_epoch is not None and best_epoch in epochs:
        best_value = val[epochs.index(best_epoch)]
        axes.axvline(best_epoch, color=val_color if not single else '#777777',
                     linestyle=':', linewidth=1)
        axes.plot([best_epoch], [best_value], marker='*', markersize=14, color=val_color,
                  markeredgecolor='black', linestyle='none',
                  label=f'{prefix}best (epoch {best_epoch})')
  for axes, key in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
    axes.set_xlabel('epoch', fontsize=11)
    axes.set_ylabel(key, fontsize=11)
    axes.set_title(f'{key} per epoch', fontsize=12)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlim(0.5, max_epoch + 0.5)
    axes.legend(fontsize=9)
  accuracy_axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
  figure.tight_layout()
  return figure


def misclassified_figure(images: np.ndarray, true_names: Sequence[str],
                         predicted_names: Sequence[str], probabilities: Sequence[float],
                         columns: int = 4, title: str = ''):
  """A grid of misclassified images (most confident first), each with its true label and the
  predicted label and probability; a figure saying so when there are none."""
  count = len(images)
  if count == 0:
    figure, axes = plt.subplots(figsize=(5, 2))
    axes.text(0.5, 0.5, 'no misclassified examples', ha='center', va='center', fontsize=14)
    axes.axis('off')
    return figure
  columns = min(columns, count)
  rows = -(-count // columns)
  figure, grid = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows + 0.6),
                              squeeze=False)
  for axes in grid.flat:
    axes.axis('off')
  for axes, image, true, predicted, probability in zip(
      grid.flat, images, true_names, predicted_names, probabilities):
    axes.imshow(image, interpolation='nearest' if image.shape[0] < 64 else 'antialiased')
    axes.set_title(f'true: {_shorten(true, 22)}', fontsize=10, color='#1a6e1a', pad=16)
    # Second line in red: the wrong prediction.
    axes.text(0.5, 1.01, f'pred: {_shorten(predicted, 18)} ({100 * probability:.1f}%)',
              transform=axes.transAxes, ha='center', va='bottom', fontsize=10, color='#c0392b')
  figure.suptitle((f'{title}: ' if title else '') + 'most confident mistakes', fontsize=13)
  figure.tight_layout()
  return figure


def lr_find_figure(learning_rates: Sequence[float], losses: Sequence[float],
                   smoothed_losses: Sequence[float], suggestion: float, rule: str,
                   minimum_rate: float | None = None):
  """The learning-rate range test: raw and smoothed loss against the rate (log axis), the
  suggested rate marked, and the rate of the smallest smoothed loss dotted."""
  figure, axes = plt.subplots(figsize=(7, 4.5))
  axes.plot(learning_rates, losses, color='tab:blue', alpha=0.3, linewidth=1, label='loss')
  axes.plot(learning_rates, smoothed_losses, color='tab:blue', linewidth=2,
            label='smoothed loss (centred)')
  axes.set_xscale('log')
  axes.set_xlabel('learning rate')
  axes.set_ylabel('train loss')
  # The diverging tail would flatten everything else: up to a little above the first losses.
  top = max(smoothed_losses[0], np.max(smoothed_losses[:max(len(smoothed_losses) // 2, 1)]))
  low = min(min(losses), min(smoothed_losses))
  axes.set_ylim(low - 0.05 * (top - low), top + 0.6 * (top - low) + 1e-6)
  at = np.interp(np.log(suggestion), np.log(learning_rates), smoothed_losses)
  axes.axvline(suggestion, color='tab:red', linestyle='--', linewidth=1)
  axes.plot([suggestion], [at], 'o', color='tab:red',
            label=f'suggestion {suggestion:.2g} ({rule})')
  if minimum_rate is not None:
    axes.axvline(minimum_rate, color='gray', linestyle=':', linewidth=1,
                 label=f'smallest smoothed loss at {minimum_rate:.2g}')
  axes.grid(True, alpha=0.3)
  axes.legend(loc='upper left')
  axes.set_title('learning-rate range test')
  figure.tight_layout()
  return figure
