"""Wrap any PyTorch or transformers model in the hookscope hook API (see :func:`wrap`)."""

from hookscope.bridge.generation import concat_steps
from hookscope.bridge.wrapper import WrappedModel, wrap

__all__ = ["WrappedModel", "concat_steps", "wrap"]
