"""Input data: example sources, train/val/test splits and Grain pipelines."""

from jaxcls.data.pipeline import epoch_order
from jaxcls.data.pipeline import eval_batches
from jaxcls.data.pipeline import steps_per_epoch
from jaxcls.data.pipeline import train_batches
from jaxcls.data.pipeline import train_epoch_length
from jaxcls.data.sampling import class_counts
from jaxcls.data.sampling import source_labels
from jaxcls.data.sources import Dataset
from jaxcls.data.sources import examples_digest
from jaxcls.data.sources import load_dataset

__all__ = ['Dataset', 'load_dataset', 'steps_per_epoch', 'train_batches', 'epoch_order',
           'examples_digest',
           'train_epoch_length', 'eval_batches', 'class_counts',
           'source_labels']
