"""What Hugging Face's ``Trainer`` and HF-style training loops read on a causal LM, for the native decoder:
the HF-style call (``labels=``, ``return_dict=``, ``output_hidden_states=``), the loss-kwargs protocol
(token-weighted gradient accumulation) and activation checkpointing.

Activation checkpointing recomputes a block's forward during the backward pass instead of keeping its
activations: memory for compute. Hooks inside a checkpointed block then fire twice per training step (once
in the forward, once in the recomputation), so leave it off while observing a training run with hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from hookscope.models.lm_loss import LMOutput, causal_lm_loss


class HFTrainingMixin:
    """Adds HF's training surface to a decoder (``blocks``, ``ln_final``) whose forward runs its blocks
    through :meth:`run_block`."""

    # read by HF's Trainer: it passes num_items_in_batch (token-weighted gradient accumulation) and counts the
    # scored tokens as a causal LM's (labels shifted), exactly as for HF's *ForCausalLM models
    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"
    _checkpoint_every = 0  # 0: off; n: every n-th block is checkpointed
    _checkpoint_kwargs: dict[str, Any] = {}
    training: bool
    blocks: Any
    ln_final: Any
    forward: Any

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

    def _forward_output(
        self, input: Any, attention_mask: torch.Tensor | None, labels: torch.Tensor | None, per_token: bool,
        position_ids: torch.Tensor | None, num_items: Any = None, output_hidden_states: bool = False,
    ) -> LMOutput:
        """HF-style call: logits, and the loss on ``labels`` when given (and HF's hidden states when asked)."""
        hidden: dict[int, torch.Tensor] = {}  # first write wins: a checkpointed block runs again in the backward
        handles = []
        if output_hidden_states:

            def keep(index: int, tensor: torch.Tensor) -> None:  # a hook that returns None changes nothing
                hidden.setdefault(index, tensor)

            n = len(self.blocks)
            handles = [block.register_forward_pre_hook(lambda _, args, i=i: keep(i, args[0]))
                       for i, block in enumerate(self.blocks)]
            handles.append(self.ln_final.register_forward_hook(lambda _, __, out: keep(n, out)))
        try:
            logits = self.forward(input, attention_mask, position_ids=position_ids)
        finally:
            for handle in handles:
                handle.remove()
        extra = {"hidden_states": tuple(hidden[i] for i in sorted(hidden))} if output_hidden_states else {}
        if labels is None:
            return LMOutput(loss=None, logits=logits, **extra)
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise TypeError("labels must be an integer tensor of token ids [batch, pos] (-100 = ignored)")
        labels = labels[None] if labels.ndim == 1 else labels
        loss = causal_lm_loss(logits, labels.to(logits.device), per_token, None if per_token else num_items)
        return LMOutput(loss=loss, logits=logits, **extra)
