"""What Hugging Face's ``Trainer`` and HF-style training loops read on a causal LM, for the native decoder:
the loss-kwargs protocol (token-weighted gradient accumulation) and activation checkpointing.

Activation checkpointing recomputes a block's forward during the backward pass instead of keeping its
activations: memory for compute. Hooks inside a checkpointed block then fire twice per training step (once
in the forward, once in the recomputation), so leave it off while observing a training run with hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


class HFTrainingMixin:
    """Adds HF's training surface to a module whose forward runs its blocks through :meth:`run_block`."""

    # read by HF's Trainer: it passes num_items_in_batch (token-weighted gradient accumulation) and counts the
    # scored tokens as a causal LM's (labels shifted), exactly as for HF's *ForCausalLM models
    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"
    _checkpoint_every = 0  # 0: off; n: every n-th block is checkpointed
    _checkpoint_kwargs: dict[str, Any] = {}
    training: bool

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False,
    ) -> None:
        """Recompute every ``every_n_layers``-th block in the backward pass (HF's ``Trainer`` calls this for
        ``activation_checkpointing=True``). ``activation_checkpointing_kwargs`` go to
        ``torch.utils.checkpoint.checkpoint`` (non-reentrant by default)."""
        if offload:
            raise ValueError("offloading checkpointed activations to the CPU is not supported here")
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}")
        self._checkpoint_every = every_n_layers
        self._checkpoint_kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False,
    ) -> None:
        """HF's older name for :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> None:
        self._checkpoint_every = 0

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._checkpoint_every > 0

    def run_block(self, index: int, block: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``block(*args, **kwargs)``, checkpointed when enabled, training and recording gradients."""
        if self._checkpoint_every and self.training and torch.is_grad_enabled() and index % self._checkpoint_every == 0:
            return checkpoint(block, *args, **self._checkpoint_kwargs, **kwargs)
        return block(*args, **kwargs)
