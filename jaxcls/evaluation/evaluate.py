"""Evaluation reports of trained runs: `python -m jaxcls.cli.evaluate --workdir DIR`.

Reopens a run's best checkpoint (`--step`), classifies a split (`--split`,
default test) and writes DIR/report/: classification_report.{md,json},
confusion_matrix.{png,csv}, curves.png and misclassified.png, plus the figures
as TensorBoard images in DIR. Every training run writes this report when it
finishes.

Beside the plain result it reports, as the run's `config.evaluate` (or the
flags) asks:
  - test-time augmentation (`tta_flip`, `tta_crops`): softmax probabilities
    averaged over mirrored and shifted views of each image;
  - an ensemble of the run's best `top_k_checkpoints` checkpoints, or of
    several runs (`--workdir A --workdir B`, which must share the class names
    and the split): softmax probabilities averaged over the members.
The figures show the ensemble where there is one, with TTA where it is on.

    python -m jaxcls.cli.evaluate --workdir /tmp/run --tta_flip --tta_crops 5
    python -m jaxcls.cli.evaluate --workdir /tmp/a --workdir /tmp/b --output_dir /tmp/ab
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging
from scipy import special

from jaxcls import data
from jaxcls.config import default_config
from jaxcls.data import transforms
from jaxcls.data.label_tasks import tasks_from_class_names
from jaxcls.errors import ConfigError
from jaxcls.evaluation import gradcam as explain
from jaxcls.evaluation.reopen import load_run
from jaxcls.evaluation.report import write_report
from jaxcls.training.checkpointing import Checkpointer

SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class View:
  """One test-time view of a batch: a shift by (top, left) within the batch zero-padded by
  `padding` pixels per side (same output size), mirrored left-right if `flip`."""
  top: int = 0
  left: int = 0
  padding: int = 0
  flip: bool = False

  def __call__(self, images: np.ndarray) -> np.ndarray:
    if self.padding:
      size = images.shape[1:3]
      p = self.padding
      padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
      images = padded[:, self.top:self.top + size[0], self.left:self.left + size[1]]
    if self.flip:
      images = images[:, :, ::-1]
    return np.ascontiguousarray(images)


IDENTITY = (View(),)


def tta_views(flip: bool, crops: int, padding: int) -> tuple[View, ...]:
  """The views `config.evaluate` describes: the center (the plain image) or four corners and
  the center of the image padded by `padding`, each also mirrored with `flip`."""
  if crops == 1:
    offsets = [(0, 0)]
    padding = 0
  elif crops == 5:
    edge = 2 * padding
    offsets = [(padding, padding), (0, 0), (0, edge), (edge, 0), (edge, edge)]
  else:
    raise ConfigError(f'config.evaluate.tta_crops={crops}: expected 1 or 5')
  return tuple(View(top, left, padding, mirrored) for top, left in offsets
               for mirrored in ((False, True) if flip else (False,)))


def predict(run, source, views: Sequence[View] = IDENTITY,
            batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(softmax probabilities [N, C] averaged over `views`, labels [N]) of `run` on `source`."""
  config = run.config
  batch_size = batch_size or config.train.eval_batch_size or config.train.batch_size
  probabilities, labels = [], []
  for batch in data.eval_batches(source, config.data, global_batch_size=batch_size):
    mask = np.asarray(batch['mask'], bool)
    mean = sum(special.softmax(run.logits(view(batch['image'])).astype(np.float64), axis=-1)
               for view in views) / len(views)
    probabilities.append(mean[mask].astype(np.float32))
    labels.append(np.asarray(batch['label'])[mask])
  return np.concatenate(probabilities), np.concatenate(labels).astype(np.int64)


def ensemble(probabilities: Sequence[np.ndarray]) -> np.ndarray:
  """The mean of the members' softmax probabilities."""
  return np.mean(np.stack(probabilities), axis=0).astype(np.float32)


def evaluation_settings(config, tta_flip=None, tta_crops=None, top_k_checkpoints=None) -> dict:
  """`config.evaluate` (the defaults for runs made before it existed), overridden where given."""
  settings = dict(default_config().evaluate)
  settings.update(dict(config.get('evaluate', {})))
  for key, value in (('tta_flip', tta_flip), ('tta_crops', tta_crops),
                     ('top_k_checkpoints', top_k_checkpoints)):
    if value is not None:
      settings[key] = value
  if settings['tta_crops'] not in (1, 5):
    raise ConfigError(f'config.evaluate.tta_crops={settings["tta_crops"]}: expected 1 or 5')
  if settings['top_k_checkpoints'] < 1:
    raise ConfigError(
        f'config.evaluate.top_k_checkpoints={settings["top_k_checkpoints"]}: must be >= 1')
  return settings


def training_history(workdir: Path, config) -> tuple[list[dict], int | None]:
  """(per-epoch history, best epoch) from results.json, or from the latest checkpoint while
  the run is unfinished."""
  results_file = workdir / 'results.json'
  if results_file.is_file():
    results = json.loads(results_file.read_text())
    return results.get('history', []), results.get('best_epoch')
  checkpointer = Checkpointer(str(workdir / 'checkpoints'), config.checkpoint)
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      return [], None
    history = checkpointer.restore_meta(latest)['history']
  finally:
    checkpointer.close()
  return history, _best_entry(history, config.checkpoint)['epoch'] if history else None


def _best_entry(history: list[dict], checkpoint_config) -> dict:
  metric, sign = checkpoint_config.best_metric, (1 if checkpoint_config.best_mode == 'max' else -1)
  # max() keeps the first of equals, as Orbax's best checkpoint does.
  return max(history, key=lambda h: sign * h['val'][metric])


def top_checkpoint_steps(workdir: Path, config, k: int) -> tuple[list[int], str | None]:
  """The best `k` checkpoints on disk by the run's validation metric, best first, and a note
  when fewer than `k` exist."""
  directory = workdir / 'checkpoints'
  on_disk = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []
  if not on_disk:
    raise FileNotFoundError(f'{workdir} has no checkpoint yet')
  history, _ = training_history(workdir, config)
  val_by_step = {h['step']: h['val'] for h in history}
  metric = config.checkpoint.best_metric
  sign = 1 if config.checkpoint.best_mode == 'max' else -1
  ranked = sorted((s for s in on_disk if s in val_by_step),
                  key=lambda s: (-sign * val_by_step[s][metric], -s))
  steps = ranked[:k]
  note = None
  if len(steps) < k:
    note = (f'{workdir}: asked for the top {k} checkpoints by val {metric}, but only '
            f'{len(ranked)} are on disk (checkpoint.keep={config.checkpoint.keep} latest and the '
            f'best are kept): steps {", ".join(map(str, ranked))}')
    logging.warning('%s', note)
  return steps, note


def _check_same_split(workdirs, runs, datasets, split: str) -> None:
  first_dir, first_run, first_data = workdirs[0], runs[0], datasets[0]
  first_record = _split_record(first_dir, split)
  for workdir, run, dataset in zip(workdirs[1:], runs[1:], datasets[1:]):
    problems = []
    if run.class_names != first_run.class_names:
      problems.append(f'class names {list(run.class_names)} != {list(first_run.class_names)}')
    if run.config.data.source != first_run.config.data.source:
      problems.append(f'data.source {run.config.data.source!r} != '
                      f'{first_run.config.data.source!r}')
    source, first_source = getattr(dataset, split), getattr(first_data, split)
    if len(source) != len(first_source) or not np.array_equal(
        _labels(source), _labels(first_source)):
      problems.append(f'the {split} splits differ ({len(source)} vs {len(first_source)} examples '
                      'or other labels)')
    elif _split_record(workdir, split) != first_record:
      problems.append(f'splits.json records a different {split} split')
    if problems:
      raise ValueError(f'cannot ensemble {workdir} with {first_dir}: ' + '; '.join(problems))


def _labels(source) -> np.ndarray:
  labels = getattr(source, 'labels', None)
  if labels is not None:
    return np.asarray(labels)
  return np.asarray([source[i]['label'] for i in range(len(source))])


def _split_record(workdir: Path, split: str):
  path = workdir / 'splits.json'
  return json.loads(path.read_text()).get(split) if path.is_file() else None


def evaluate(workdirs: Sequence[str | Path], *, split: str = 'test', step: int | str = 'best',
             tta_flip: bool | None = None, tta_crops: int | None = None,
             top_k_checkpoints: int | None = None) -> dict:
  """Predictions of every member (checkpoint), with and without TTA, and of their ensemble.

  Returns the keyword arguments of `jaxcls.evaluation.report.write_report` (less the
  output folders) plus 'step', the (first) checkpoint's step.
  """
  workdirs = _checked_workdirs(workdirs, split)
  settings = evaluation_settings(load_run_config(workdirs[0]), tta_flip, tta_crops,
                                 top_k_checkpoints)
  if settings['top_k_checkpoints'] > 1 and step != 'best':
    raise ValueError(f'evaluate.top_k_checkpoints={settings["top_k_checkpoints"]} ranks the '
                     f'checkpoints itself; it cannot be combined with step={step!r}')
  runs, run_dirs, source, notes = _members(workdirs, split, step, settings['top_k_checkpoints'])
  results, primary, labels, tta_name = _predictions(workdirs, run_dirs, runs, source, settings)
  resize = transforms.Resize.from_config(runs[0].config.data)

  def images(indices):
    return np.stack([resize.map({'image': np.asarray(source[int(i)]['image'])})['image']
                     for i in indices])

  names = _display_names(workdirs)
  histories = {names[w]: training_history(w, load_run_config(w)) for w in workdirs}
  tasks = tasks_from_class_names(runs[0].class_names, runs[0].config.tasks.names,
                                 runs[0].config.tasks.separator)
  return dict(split=split, class_names=runs[0].class_names, labels=labels, results=results,
              primary=primary, images=images, histories=histories, notes=notes, tasks=tasks,
              step=runs[0].step,
              info=dict(workdirs=[str(w) for w in workdirs],
                        checkpoints=[f'{w}@{r.step}' for w, r in zip(run_dirs, runs)],
                        tta=tta_name or None, settings=settings))


def _checked_workdirs(workdirs, split: str) -> list[Path]:
  if split not in SPLITS:
    raise ValueError(f'split {split!r}: expected one of {SPLITS}')
  workdirs = [Path(w) for w in workdirs]
  if not workdirs:
    raise ValueError('no workdir to evaluate')
  for workdir in workdirs:
    if not (workdir / 'config.json').is_file():
      raise FileNotFoundError(f'{workdir} is not a jaxcls workdir: no config.json')
  repeated = {str(w) for w in workdirs if sum(w.resolve() == v.resolve() for v in workdirs) > 1}
  if repeated:
    raise ValueError(f'workdir {", ".join(sorted(repeated))} given more than once')
  return workdirs


def _display_names(workdirs: Sequence[Path]) -> dict[Path, str]:
  """Folder names, unless two runs share one: then the paths."""
  unique = len({w.name for w in workdirs}) == len(workdirs)
  return {w: w.name if unique else str(w) for w in workdirs}


def _members(workdirs, split: str, step, top_k: int):
  """(reopened runs, the workdir of each, the split's source, notes): one run per checkpoint,
  the top `top_k` of each workdir by validation when `top_k` > 1."""
  notes, runs, datasets, run_dirs = [], [], [], []
  for workdir in workdirs:
    config = load_run_config(workdir)
    steps = [step]
    if top_k > 1:
      steps, note = top_checkpoint_steps(workdir, config, top_k)
      if note:
        notes.append(note)
    dataset = data.load_dataset(config.data, str(workdir))
    for member_step in steps:
      runs.append(load_run(workdir, member_step))
      datasets.append(dataset)
      run_dirs.append(workdir)
  _check_same_split(run_dirs, runs, datasets, split)
  source = getattr(datasets[0], split)
  if len(source) == 0:
    raise ValueError(f'the {split} split of {workdirs[0]} is empty')
  return runs, run_dirs, source, notes


def _predictions(workdirs, run_dirs, runs, source, settings):
  """({name: {'probabilities': ...}} of each member, its TTA and their ensembles; the primary
  result's name; the labels; the TTA's description, '' without)."""
  tta = settings['tta_flip'] or settings['tta_crops'] > 1
  tta_name = ', '.join(([f'{settings["tta_crops"]} crops'] if settings['tta_crops'] > 1 else [])
                       + (['flip'] if settings['tta_flip'] else []))
  names = _display_names(workdirs)
  plain, augmented, labels = {}, {}, None
  for workdir, run in zip(run_dirs, runs):
    name = f'step {run.step} (epoch {run.epoch}{", EMA" if run.weights == "ema" else ""})'
    if len(workdirs) > 1:
      name = f'{names[workdir]}: {name}'
    plain[name], labels = predict(run, source)
    if tta:
      augmented[name] = predict(run, source, tta_views(
          settings['tta_flip'], settings['tta_crops'], _crop_padding(run.config)))[0]
    logging.info('%s accuracy %.4f', name, float((plain[name].argmax(-1) == labels).mean()))
  results = {}
  for name in plain:
    results[name] = {'probabilities': plain[name]}
    if tta:
      results[f'{name} + TTA'] = {'probabilities': augmented[name], 'tta': tta_name}
  primary = next(iter(plain))
  if len(plain) > 1:
    members = list(plain)
    primary = f'ensemble of {len(members)}'
    results[primary] = {'probabilities': ensemble(list(plain.values())), 'members': members}
    if tta:
      results[f'{primary} + TTA'] = {'probabilities': ensemble(list(augmented.values())),
                                     'members': members, 'tta': tta_name}
  return results, f'{primary} + TTA' if tta else primary, labels, tta_name


def _crop_padding(config) -> int:
  return config.data.augment.random_crop_padding or max(1, config.data.image_size // 8)


def load_run_config(workdir: Path):
  return ml_collections.ConfigDict(json.loads((Path(workdir) / 'config.json').read_text()))


def evaluate_and_report(workdirs: Sequence[str | Path], *, output_dir: str | Path | None = None,
                        **kwargs) -> dict:
  """`evaluate`, then `write_report` into `output_dir` (default: WORKDIR/report/ for one run,
  FIRST_WORKDIR/report/ensemble/ for several), with TensorBoard images in the (first)
  workdir. Returns the JSON report."""
  workdirs = [Path(w) for w in workdirs]
  evaluation = evaluate(workdirs, **kwargs)
  variant = report_variant(len(workdirs), **kwargs)
  if output_dir is None:
    output_dir = workdirs[0] / 'report' / variant
  step = evaluation.pop('step')
  evaluation['info']['output_dir'] = str(output_dir)
  return write_report(output_dir, **evaluation, tensorboard_dir=workdirs[0],
                      tensorboard_step=step,
                      tensorboard_prefix='/'.join(filter(None, ('report', variant))))


def report_variant(num_workdirs: int = 1, *, split: str = 'test', step: int | str = 'best',
                   tta_flip: bool | None = None, tta_crops: int | None = None,
                   top_k_checkpoints: int | None = None) -> str:
  """The folder under WORKDIR/report/ of an evaluation: '' for the run's own report (the test
  split at the best checkpoint, as the run's config evaluates it), else a name for what
  differs ('val', 'step_22', 'ensemble', 'tta_flip_5crops', 'top_3', joined by '_'), so
  evaluating another split or setting never overwrites the run's report."""
  parts = ['ensemble'] if num_workdirs > 1 else []
  if split != 'test':
    parts.append(split)
  if step != 'best':
    parts.append(f'step_{step}')
  if tta_flip is not None or tta_crops is not None:
    parts.append('tta' + ('_flip' if tta_flip else '_noflip' if tta_flip is False else '')
                 + (f'_{tta_crops}crops' if tta_crops is not None else ''))
  if top_k_checkpoints is not None:
    parts.append(f'top_{top_k_checkpoints}')
  return '_'.join(parts)


def report_finished_run(workdir: str | Path) -> None:
  """The report a training run writes for its test split when it finishes.

  A failure is logged, not raised: the run's results.json is already written.
  """
  try:
    evaluate_and_report([workdir], split='test')
    write_gradcam_section(workdir)
  except Exception:  # pylint: disable=broad-except
    logging.exception('could not write the evaluation report of %s', workdir)


def write_gradcam_section(workdir: str | Path, num_images: int = 8) -> Path:
  """report/gradcam.png: where the best checkpoint looks, on the first test images."""
  run = load_run(workdir)
  dataset = data.load_dataset(run.config.data, str(workdir))
  batch = next(data.eval_batches(dataset.test, run.config.data, global_batch_size=num_images))
  images, labels = batch['image'][batch['mask']], batch['label'][batch['mask']]
  cams, probabilities = explain.explain_images(run, images)
  names = [f'test #{i}: true {run.class_names[label]}' for i, label in enumerate(labels)]
  return explain.plot_gradcam(names, images, cams, probabilities, run.class_names,
                              Path(workdir) / 'report' / 'gradcam.png',
                              note=explain.coarse_map_note(run.model, images.shape[1]))
