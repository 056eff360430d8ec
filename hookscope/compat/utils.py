"""``transformer_lens.utils``: the helpers TL code imports, with TL's signatures and return shapes."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hookscope.analysis.prompt_report import prompt_report
from hookscope.components.activations import ACTIVATIONS, gelu_fast, gelu_new
from hookscope.factored_matrix import composition_scores
from hookscope.names import get_act_name
from hookscope.training import data as _data

__all__ = [
    "ACTIVATION_FN_DICT", "USE_DEFAULT_VALUE", "Slice", "calc_fan_in_and_fan_out", "clear_huggingface_cache",
    "composition_scores",
    "gelu_fast", "gelu_new", "get_act_name", "get_attention_mask", "get_corner", "get_cumsum_along_dim",
    "get_nested_attr", "get_offset_position_ids", "init_kaiming_normal_", "init_kaiming_uniform_",
    "init_xavier_normal_", "init_xavier_uniform_", "is_library_available", "is_lower_triangular", "is_square",
    "lm_accuracy", "lm_cross_entropy_loss", "override_or_use_default_value", "remove_batch_dim",
    "repeat_along_head_dimension", "select_compatible_kwargs", "set_nested_attr", "solu", "test_prompt",
    "to_numpy", "tokenize_and_concatenate", "transpose",
]

logger = logging.getLogger(__name__)

USE_DEFAULT_VALUE = None  # TL's sentinel: "use the model's own default" for prepend_bos / padding_side


class Slice:
    """TL's ``Slice``: None (everything), an int (drops the axis), ``(start, stop[, step])``, a slice, or
    a list / array / tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, tuple):
            self.slice: Any = slice(*input_slice)
            self.mode = "slice"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, torch.Tensor, np.ndarray)):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"invalid slice input {input_slice!r}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = torch.as_tensor(self.slice, dtype=torch.long) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be given unless the slice is an int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input: Any) -> Slice:
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, int) else slice_input)

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array of a tensor (detached, on CPU), array, list or number."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, (torch.Tensor, torch.nn.Parameter)):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"cannot convert {type(tensor).__name__} to a numpy array")


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a leading axis of size 1 (other tensors are returned as they are)."""
    return tensor[0] if tensor.shape[0] == 1 else tensor


def lm_cross_entropy_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: mean, or ``[batch, pos - 1]`` with ``per_token``; masked pairs count 0."""
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs[..., :-1, :].gather(-1, tokens[..., 1:, None])[..., 0]  # [batch, pos - 1]
    if attention_mask is not None:
        keep = torch.logical_and(attention_mask[:, :-1], attention_mask[:, 1:])
        picked = picked * keep
        count = keep.sum()
    else:
        count = picked.numel()
    return -picked if per_token else -picked.sum() / count


def lm_accuracy(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """How often the top prediction at ``t`` is the token at ``t + 1``."""
    hits = logits.argmax(-1)[:, :-1] == tokens[:, 1:]
    return hits if per_token else hits.sum() / hits.numel()


def solu(x: torch.Tensor) -> torch.Tensor:
    """SoLU: ``x * softmax(x)`` over the last axis."""
    return x * F.softmax(x, dim=-1)


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The ``n``-wide corner of every axis (a FactoredMatrix is asked for its own corner)."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def get_attention_mask(tokenizer: Any, tokens: torch.Tensor, prepend_bos: bool,
                       padding_side: str | None = None) -> torch.Tensor:
    """1 for real tokens, 0 for padding: trailing pad ids (right padding) or leading ones (left padding);
    with left padding and BOS == PAD, the BOS after the padding counts as real."""
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    mask = torch.ones_like(tokens)
    if tokenizer is None or tokenizer.pad_token_id is None:
        return mask
    real = tokens.ne(tokenizer.pad_token_id).long()
    if side == "right":
        pad = real.flip(-1).cumsum(-1).flip(-1) == 0
        mask[pad] = 0
    else:
        pad = real.cumsum(-1) == 0
        mask[pad] = 0
        if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
            # the BOS is the last of the leading pad-id run (it was counted as padding above)
            bos = (pad.sum(-1) - 1).clamp(min=0)
            mask[torch.arange(len(mask)), bos] = 1
    return mask


def tokenize_and_concatenate(dataset: Any, tokenizer: Any, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: int = 10) -> Any:
    """TL's signature over :func:`hookscope.training.data.tokenize_and_concatenate` (texts joined with EOS,
    packed into ``max_length`` rows; a dataset gets a ``"tokens"`` column). Tokenising runs in this process,
    but the rows are TL's for the same ``num_proc``: its ``datasets.map`` packs each of ``num_proc`` contiguous
    shards apart (none under ``streaming``, as TL)."""
    return _data.tokenize_and_concatenate(dataset, tokenizer, max_length=max_length, column=column_name,
                                          add_bos_token=add_bos_token, num_proc=None if streaming else num_proc)


# TL's act_fn names -> functions (``solu_ln`` is SoLU; the LayerNorm after it is the MLP's, not the function's)
ACTIVATION_FN_DICT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **ACTIVATIONS, "solu": solu, "solu_ln": solu,
}


def is_square(x: torch.Tensor) -> bool:
    """True for a 2-D ``[n, n]`` tensor (any other rank is not square)."""
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: torch.Tensor) -> bool:
    """True for a square matrix with only zeros above the diagonal."""
    return is_square(x) and bool(x.equal(x.tril()))


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """Swap the last two axes, whatever the leading ones: ``[..., a, b]`` -> ``[..., b, a]``."""
    return tensor.transpose(-1, -2)


def calc_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """Fan in / out in TL's weight layout: ``[d_in, d_out]`` for a matrix, ``[n_heads, d_model, d_head]`` for
    an attention weight (fan in d_model, fan out n_heads * d_head), ``[d]`` for a vector (1, d)."""
    shape = tuple(tensor.shape)
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"fan in and fan out are defined for 1-, 2- and 3-D weights, got shape {shape}")


def init_xavier_uniform_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Fill ``param`` in place from U(-a, a), ``a = gain * sqrt(6 / (fan_in + fan_out))`` (TL's fans)."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * float(np.sqrt(6.0 / (fan_in + fan_out)))
    return torch.nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Fill ``param`` in place from N(0, std²), ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return torch.nn.init.normal_(param, mean=0.0, std=gain * float(np.sqrt(2.0 / (fan_in + fan_out))))


def _kaiming_std(param: torch.Tensor, a: float, nonlinearity: str, gain: float, mode: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return gain * torch.nn.init.calculate_gain(nonlinearity, a) / float(np.sqrt(fan))  # type: ignore[arg-type]


def init_kaiming_uniform_(param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                          mode: str = "fan_in") -> torch.Tensor:
    """Fill ``param`` in place from U(-b, b) with std ``gain * calculate_gain(nonlinearity, a) / sqrt(fan)``
    (``b = sqrt(3) * std``); ``fan`` is TL's fan in or fan out (``mode``)."""
    bound = float(np.sqrt(3.0)) * _kaiming_std(param, a, nonlinearity, gain, mode)
    return torch.nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                         mode: str = "fan_in") -> torch.Tensor:
    """Fill ``param`` in place from N(0, std²), ``std = gain * calculate_gain(nonlinearity, a) / sqrt(fan)``."""
    return torch.nn.init.normal_(param, mean=0.0, std=_kaiming_std(param, a, nonlinearity, gain, mode))


def override_or_use_default_value(default_flag: Any, override: Any = None) -> Any:
    """``override`` unless it is None, else ``default_flag``."""
    return default_flag if override is None else override


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face hub cache folder (``HF_HUB_CACHE``) and everything in it, as TL's helper does
    (CI jobs call it to free disk between models). Every downloaded model must then be downloaded again."""
    import shutil

    from huggingface_hub import constants

    folder = constants.HF_HUB_CACHE
    logger.info("deleting the Hugging Face cache folder %s and all its contents", folder)
    shutil.rmtree(folder)


def is_library_available(name: str) -> bool:
    """Whether module ``name`` is imported or importable (found without importing it)."""
    return name in sys.modules or importlib.util.find_spec(name) is not None


def select_compatible_kwargs(kwargs_dict: dict[str, Any], func: Callable[..., Any]) -> dict[str, Any]:
    """The entries of ``kwargs_dict`` that name a parameter of ``func``."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot read the parameters of {func!r} (a builtin without a signature?)") from e
    return {k: v for k, v in kwargs_dict.items() if k in params}


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[batch, pos]`` counted from each row's first attended token (padding before it gets 0),
    keeping the positions from ``past_kv_pos_offset`` on."""
    shifted = attention_mask.cumsum(dim=1) - 1  # [batch, offset_pos]
    return shifted.clamp(min=0)[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: torch.Tensor, dim: int, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum along ``dim``; ``reverse`` sums from the end."""
    if not reverse:
        return tensor.cumsum(dim=dim)
    return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))


def repeat_along_head_dimension(tensor: torch.Tensor, n_heads: int, clone_tensor: bool = True) -> torch.Tensor:
    """``[batch, pos, d_model]`` -> ``[batch, pos, n_heads, d_model]`` (a copy unless ``clone_tensor=False``)."""
    repeated = tensor[:, :, None, :].expand(-1, -1, n_heads, -1)  # [batch, pos, head_index, d_model]
    return repeated.clone() if clone_tensor else repeated


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``obj.a.b.c`` for ``attr_str="a.b.c"``."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set ``obj.a.b.c = value`` for ``attr_str="a.b.c"``."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


def test_prompt(prompt: str, answer: str | list[str], model: Any, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> None:
    """TL's ``test_prompt``: print how the model ranks the answer tokens after the prompt, with TL's calls
    (``print("Tokenized prompt:", str_tokens)`` then ``print("Tokenized answer:", str_tokens)``, then the
    report of :func:`hookscope.analysis.prompt_report.prompt_report`). A list of answers is reported one
    answer after the other."""
    for report in prompt_report(prompt, answer, model, prepend_space_to_answer, print_details, prepend_bos, top_k):
        if print_details:
            print("Tokenized prompt:", report.prompt_str_tokens)  # noqa: T201  (TL's output, call by call)
            print("Tokenized answer:", report.answer_str_tokens)  # noqa: T201
        print(report.body)  # noqa: T201


test_prompt.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name
