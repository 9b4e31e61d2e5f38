"""jaxcls: a JAX/Flax trainer for image classification."""

__version__ = '0.1.0'
