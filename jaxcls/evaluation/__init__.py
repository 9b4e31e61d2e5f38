"""After training: reopening runs, evaluation and ensembles, prediction, Grad-CAM, reports."""
