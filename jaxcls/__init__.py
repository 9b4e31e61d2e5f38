"""jaxcls: a JAX/Flax trainer for image classification.

The folders are layers, each importing only those below it (README, Layout):
cli/ (the programs) > experiment.py (check, train, report) > evaluation/ (after
training) > config.py (load and check configs) > training/ (setup, loop, steps,
optimizers, fine-tuning, checkpoints) > models/ and data/ > pretrained/ > errors.py.
"""

__version__ = '0.1.0'
