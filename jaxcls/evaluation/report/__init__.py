"""The evaluation report of a run: tables (scikit-learn metrics), figures, TensorBoard images.

Nothing here needs JAX or a model: the report is written from class names,
labels and predicted probabilities, which `jaxcls.evaluation.evaluate` computes.

  classification.py  per-class and overall metrics, Markdown and CSV
  figures.py         confusion matrix, training curves, misclassified examples
  tensorboard.py     the figures as TensorBoard images (skipped without clu/TF)
  writer.py          `write_report`: all of the above into one folder
"""

from jaxcls.evaluation.report.writer import write_report

__all__ = ['write_report']
