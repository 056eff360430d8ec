"""FactoredMatrix: a matrix ``M = A @ B`` kept as its two factors (TransformerLens semantics).

Attention circuits are low-rank products: a head's QK circuit ``W_Q W_K^T`` is ``[d_model, d_model]`` but has
rank ``d_head``; its OV circuit ``W_V W_O`` likewise. Keeping the factors makes products, norms, SVDs and
eigenvalues cost ``O(d_model * d_head^2)`` instead of ``O(d_model^3)``.

Conventions follow TransformerLens so that code written for it keeps its meaning: ``svd()`` returns
``(U, S, Vh)`` with ``M == U @ diag(S) @ Vh.T`` (``Vh`` is NOT transposed, as TransformerLens documents),
leading (batch) dimensions broadcast, indexing addresses the leading dimensions first. Pure torch: this module
knows no model.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from hookscope.errors import InputCheckError, ShapeMismatchError


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-2, -1)


def _as_slice(idx: tuple, where: int) -> tuple:
    """Turn an int at ``idx[where]`` into a length-one slice (a matrix axis must stay an axis)."""
    items = list(idx)
    if isinstance(items[where], int):
        items[where] = slice(items[where], items[where] + 1 if items[where] != -1 else None)
    return tuple(items)


def _check_leading(left: torch.Size, right: torch.Size) -> None:
    """Raise a ShapeMismatchError when the leading (batch) dims of a product's operands do not broadcast."""
    try:
        torch.broadcast_shapes(left[:-2], right[:-2])
    except RuntimeError as err:
        raise ShapeMismatchError(
            f"Shape mismatch: the leading dimensions do not broadcast: {tuple(left)} @ {tuple(right)}") from err


class FactoredMatrix:
    """The matrix ``A @ B`` (``A [..., ldim, mdim]``, ``B [..., mdim, rdim]``), never formed unless asked.

    Args:
        A: left factor ``[..., ldim, mdim]``.
        B: right factor ``[..., mdim, rdim]``; leading dimensions of A and B broadcast.
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
            raise TypeError(f"FactoredMatrix takes two tensors, got {type(A).__name__} and {type(B).__name__}")
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"both factors need at least 2 dimensions, got shapes {tuple(A.shape)}, {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise InputCheckError(
                f"factors must match on the inner dimension: A {tuple(A.shape)} @ B {tuple(B.shape)}"
            )
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as err:
            raise ShapeMismatchError(
                f"Shape mismatch: the leading dimensions do not broadcast: A {tuple(A.shape)}, B {tuple(B.shape)}"
            ) from err
        self.shape = torch.Size((*leading, self.ldim, self.rdim))
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        self.A = A.broadcast_to((*leading, self.ldim, self.mdim))
        self.B = B.broadcast_to((*leading, self.mdim, self.rdim))

    # ------------------------------------------------------------------ products
    def __matmul__(self, other: Any) -> Any:
        """``M @ other``: a FactoredMatrix for a matrix (the cheaper grouping), a tensor for a vector."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.ndim < 2:  # a vector: collapse to a tensor
            if other.shape[-1] != self.rdim:
                raise InputCheckError(f"vector of length {other.shape[-1]} does not match {tuple(self.shape)}")
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise InputCheckError(f"cannot multiply {tuple(self.shape)} by {tuple(other.shape)}: inner dims differ")
        _check_leading(self.shape, other.shape)
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Any) -> Any:
        """``other @ M``."""
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.shape[-1] != self.ldim:
            raise InputCheckError(f"cannot multiply {tuple(other.shape)} by {tuple(self.shape)}: inner dims differ")
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        _check_leading(other.shape, self.shape)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: int | float | torch.Tensor) -> FactoredMatrix:
        """Scalar multiple (scales ``A``); use ``@`` for matrix products."""
        if isinstance(scalar, torch.Tensor) and scalar.numel() != 1:
            raise InputCheckError(f"* takes a scalar, got a tensor of shape {tuple(scalar.shape)}; use @ for products")
        if not isinstance(scalar, (int, float, torch.Tensor)):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: int | float | torch.Tensor) -> FactoredMatrix:
        return self * scalar

    @property
    def AB(self) -> torch.Tensor:  # [..., ldim, rdim]
        """The dense product (can be large)."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:  # [..., mdim, mdim]
        """The reverse product ``B @ A``; defined only for square matrices."""
        if self.ldim != self.rdim:
            raise InputCheckError(f"BA needs a square matrix (ldim == rdim), shape is {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(_transpose(self.B), _transpose(self.A))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # ------------------------------------------------------------------ spectra
    @cached_property
    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # SVD of each factor, then of the small middle matrix: M = Ua (Sa Va^T Ub Sb) Vb^T
        ua, sa, vha = torch.linalg.svd(self.A, full_matrices=False)
        ub, sb, vhb = torch.linalg.svd(self.B, full_matrices=False)
        middle = sa[..., :, None] * (vha @ ub) * sb[..., None, :]
        um, sm, vhm = torch.linalg.svd(middle, full_matrices=False)
        return ua @ um, sm, _transpose(vhb) @ _transpose(vhm)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U [..., ldim, k], S [..., k], Vh [..., rdim, k])`` with ``M == U @ diag(S) @ Vh.T``.

        ``Vh`` holds the right singular vectors as columns (TransformerLens's convention, not torch's).
        """
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        return self._svd[0]

    @property
    def S(self) -> torch.Tensor:
        return self._svd[1]

    @property
    def Vh(self) -> torch.Tensor:
        return self._svd[2]

    @property
    def V(self) -> torch.Tensor:
        """The right singular vectors as columns ``[..., rdim, k]``: the same tensor as :attr:`Vh` (TransformerLens
        3's name for it; ``M == U @ diag(S) @ V.T``)."""
        return self._svd[2]

    @property
    def eigenvalues(self) -> torch.Tensor:  # [..., mdim], complex
        """Eigenvalues of ``AB``, from ``BA`` (same non-zero spectrum: if ``BAv = kv`` then ``AB(Av) = k Av``)."""
        ba = self.BA
        if ba.dtype in (torch.float16, torch.bfloat16):
            ba = ba.float()  # eig has no 16-bit kernels
        return torch.linalg.eigvals(ba)

    def norm(self) -> torch.Tensor:  # [...]
        """Frobenius norm: the root of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U sqrt(S)) @ (sqrt(S) Vh^T)``: balanced factors with orthogonal rows/columns."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _transpose(self.Vh))

    def collapse_l(self) -> torch.Tensor:  # [..., mdim, rdim]
        """``diag(S) @ Vh.T``: the matrix with its left orthogonal factor removed (same norms and products
        from the left up to a rotation)."""
        return self.S[..., :, None] * _transpose(self.Vh)

    def collapse_r(self) -> torch.Tensor:  # [..., ldim, mdim]
        """``U @ diag(S)``: the matrix with its right orthogonal factor removed."""
        return self.U * self.S[..., None, :]

    # ------------------------------------------------------------------ indexing and shape
    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index leading dimensions; an index one or two longer also selects rows and then columns."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        n = len([i for i in idx if i is not None])
        if n <= self.ndim - 2:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n == self.ndim - 1:
            idx = _as_slice(idx, -1)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if n == self.ndim:
            idx = _as_slice(_as_slice(idx, -1), -2)
            return FactoredMatrix(self.A[idx[:-1]], self.B[(*idx[:-2], slice(None), idx[-1])])
        raise IndexError(f"index {idx} is too long for a FactoredMatrix of shape {tuple(self.shape)}")

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a leading axis at ``k`` (counted among the leading dimensions, as ``Tensor.unsqueeze``)."""
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The top-left ``k`` entries along every axis of the dense matrix (for a quick look)."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True) -> torch.Tensor:
    """``||L R||_F / (||L||_F ||R||_F)`` for every pair of matrices (Elhage et al. 2021, TransformerLens).

    With ``broadcast_dims`` the leading dimensions of ``left`` come first in the result and those of ``right``
    after them (``[*left_leading, *right_leading]``); otherwise they are broadcast together.
    """
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for i in range(n_left):
            right = right.unsqueeze(i)
        for i in range(n_right):
            left = left.unsqueeze(i + n_left)
    if left.rdim != right.ldim:
        raise InputCheckError(f"cannot compose {tuple(left.shape)} with {tuple(right.shape)}: inner dims differ")
    new_left, new_right = left.collapse_l(), right.collapse_r()  # [..., mdim, d], [..., d, mdim]
    l_norms = new_left.norm(dim=(-2, -1))
    r_norms = new_right.norm(dim=(-2, -1))
    return (new_left @ new_right).norm(dim=(-2, -1)) / l_norms / r_norms


def head_composition_scores(ov: FactoredMatrix, qk: FactoredMatrix, mode: str) -> torch.Tensor:
    """``[layer, head, layer, head]`` composition scores of stacked OV / QK circuits ``[layer, head, d, d]``.

    ``mode`` "Q", "K" or "V": which input of the later head reads the earlier head's output (the right
    matrix is ``QK``, ``QK^T`` or ``OV``). Pairs whose second head is not in a later layer are 0.
    """
    rights = {"Q": lambda: qk, "K": lambda: qk.T, "V": lambda: ov}
    if mode not in rights:
        raise ValueError(f"mode must be 'Q', 'K' or 'V', got {mode!r}")
    scores = composition_scores(ov, rights[mode](), broadcast_dims=True)
    layer = torch.arange(ov.shape[0], device=scores.device)
    later = layer[:, None, None, None] < layer[None, None, :, None]  # [l1, 1, l2, 1]
    return torch.where(later, scores, torch.zeros_like(scores))
