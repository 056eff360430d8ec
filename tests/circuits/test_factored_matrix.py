"""FactoredMatrix against the dense product it stands for; QK/OV views and composition scores by brute force."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.analysis.composition import all_composition_scores
from hookscope.factored_matrix import FactoredMatrix, composition_scores
from tests.equivalence.decoder_configs import random_hf_model

EXACT = dict(atol=1e-10, rtol=1e-9)


def factors(*lead: int, ldim: int = 7, mdim: int = 3, rdim: int = 5, seed: int = 0) -> FactoredMatrix:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*lead, ldim, mdim, generator=gen, dtype=torch.float64)
    b = torch.randn(*lead, mdim, rdim, generator=gen, dtype=torch.float64)
    return FactoredMatrix(a, b)


def test_svd_reconstructs_the_dense_product_with_tl_vh_convention() -> None:
    m = factors(2, 4)
    u, s, vh = m.svd()
    assert u.shape == (2, 4, 7, 3) and s.shape == (2, 4, 3) and vh.shape == (2, 4, 5, 3)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ vh.transpose(-2, -1), m.AB, **EXACT)
    dense_s = torch.linalg.svdvals(m.AB)[..., :3]
    torch.testing.assert_close(s, dense_s, **EXACT)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 4, 3, 3)
    torch.testing.assert_close(u.transpose(-2, -1) @ u, eye, **EXACT)
    torch.testing.assert_close(vh.transpose(-2, -1) @ vh, eye, **EXACT)
    assert m.V is m.Vh  # TransformerLens 3's name for the right singular vectors


def test_norm_and_eigenvalues_equal_dense_ones() -> None:
    m = factors(3, ldim=6, rdim=6)
    torch.testing.assert_close(m.norm(), torch.linalg.matrix_norm(m.AB), **EXACT)
    ours = m.eigenvalues  # [3, mdim]: the non-zero spectrum of AB
    dense = torch.linalg.eigvals(m.AB)  # [3, 6]: three of them are zero
    for row_ours, row_dense in zip(ours, dense, strict=True):
        nonzero = row_dense[row_dense.abs() > 1e-8]
        key = lambda z: (round(z.real.item(), 6), round(z.imag.item(), 6))  # noqa: E731
        assert sorted(map(key, row_ours)) == sorted(map(key, nonzero))


def test_products_with_tensors_vectors_and_factored_matrices() -> None:
    m = factors(2)
    gen = torch.Generator().manual_seed(1)
    right = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    left = torch.randn(2, 9, 7, generator=gen, dtype=torch.float64)
    vec_r, vec_l = torch.randn(5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close((m @ right).AB, m.AB @ right, **EXACT)
    torch.testing.assert_close((left @ m).AB, left @ m.AB, **EXACT)
    torch.testing.assert_close(m @ vec_r, m.AB @ vec_r, **EXACT)
    torch.testing.assert_close(vec_l @ m, vec_l @ m.AB, **EXACT)
    other = factors(2, ldim=5, mdim=2, rdim=4, seed=3)
    torch.testing.assert_close((m @ other).AB, m.AB @ other.AB, **EXACT)
    torch.testing.assert_close((2.5 * m).AB, 2.5 * m.AB, **EXACT)
    torch.testing.assert_close(m.T.AB, m.AB.transpose(-2, -1), **EXACT)
    sq = factors(ldim=4, rdim=4)
    torch.testing.assert_close(sq.BA, sq.B @ sq.A, **EXACT)


def test_indexing_collapse_even_corner_and_broadcast() -> None:
    m = factors(3, 2)
    torch.testing.assert_close(m[1].AB, m.AB[1], **EXACT)
    torch.testing.assert_close(m[1, 0, 2:5].AB, m.AB[1, 0, 2:5], **EXACT)
    torch.testing.assert_close(m[1, 0, 4, 1:3].AB, m.AB[1, 0, 4:5, 1:3], **EXACT)
    torch.testing.assert_close(m.make_even().AB, m.AB, **EXACT)
    u = m.U
    torch.testing.assert_close(u @ m.collapse_l(), m.AB, **EXACT)
    torch.testing.assert_close(m.collapse_r() @ m.Vh.transpose(-2, -1), m.AB, **EXACT)
    torch.testing.assert_close(m.get_corner(2), m.AB[:2, :2, :2, :2], **EXACT)
    shared_b = FactoredMatrix(torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64))
    assert shared_b.shape == (4, 6, 3) and shared_b.A.shape == (4, 6, 2) and shared_b.B.shape == (4, 2, 3)


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="inner dimension"):
        FactoredMatrix(torch.randn(4, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="square"):
        _ = factors().BA
    with pytest.raises(ValueError, match="scalar"):
        _ = factors() * torch.ones(3)
    with pytest.raises(IndexError, match="too long"):
        _ = factors()[0, 0, 0]


def test_composition_scores_equal_the_dense_formula() -> None:
    left, right = factors(2, ldim=6, rdim=6), factors(3, ldim=6, rdim=6, seed=4)
    scores = composition_scores(left, right)
    assert scores.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            lab, rab = left.AB[i], right.AB[j]
            want = torch.linalg.matrix_norm(lab @ rab) / torch.linalg.matrix_norm(lab) / torch.linalg.matrix_norm(rab)
            torch.testing.assert_close(scores[i, j], want, **EXACT)


@pytest.mark.parametrize("name", ["gpt2", "llama"])  # llama: GQA, 2 query heads per key head
def test_qk_ov_views_and_all_composition_scores(name: str) -> None:
    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    group = n_heads // model.cfg.n_kv_heads
    qk, ov = model.QK, model.OV
    assert qk.shape == (n_layers, n_heads, model.cfg.d_model, model.cfg.d_model)
    d = model.cfg.d_head
    for layer in range(n_layers):
        attn = model.blocks[layer].attn
        for head in range(n_heads):
            kv = head // group
            w_q = attn.q_proj.weight[head * d:(head + 1) * d].T  # [d_model, d_head]
            w_k = attn.k_proj.weight[kv * d:(kv + 1) * d].T
            w_v = attn.v_proj.weight[kv * d:(kv + 1) * d].T
            w_o = attn.o_proj.weight[:, head * d:(head + 1) * d].T  # [d_head, d_model]
            torch.testing.assert_close(qk[layer, head].AB, w_q @ w_k.T, **EXACT)
            torch.testing.assert_close(ov[layer, head].AB, w_v @ w_o, **EXACT)
    dense_qk, dense_ov = qk.AB, ov.AB
    for mode in ("Q", "K", "V"):
        scores = all_composition_scores(model, mode)
        torch.testing.assert_close(model.all_composition_scores(mode), scores, **EXACT)
        for l1, h1, l2, h2 in [(0, 1, 1, 3), (0, 3, 2, 0), (1, 2, 2, 2), (1, 0, 1, 1), (2, 0, 0, 0)]:
            right = {"Q": dense_qk, "K": dense_qk.transpose(-2, -1), "V": dense_ov}[mode][l2, h2]
            left = dense_ov[l1, h1]
            want = torch.linalg.matrix_norm(left @ right) / torch.linalg.matrix_norm(left) / torch.linalg.matrix_norm(
                right)
            want = want if l1 < l2 else torch.zeros(())
            torch.testing.assert_close(scores[l1, h1, l2, h2], want.double(), **EXACT)
    with pytest.raises(ValueError, match="mode"):
        all_composition_scores(model, "X")  # type: ignore[arg-type]
