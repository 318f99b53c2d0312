"""Multi-view attention: the couplings of spec §1a/§1b, init equivalence (§3), view-count rules."""

import copy
import itertools

import pytest
import torch

from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from mvtune.models import MVAdapterError, attach_mv_adapter
from mvtune.models.attention import (
    RowColMVAttnProcessor,
    RowMVAttnProcessor,
    row_col_attention,
)
from mvtune.models.configs import TINY_UNET_CONFIG

SIDE = 4  # token grid 4x4
CHANNELS, HEADS = 32, 2


def _layer(processor_cls, num_views):
    torch.manual_seed(0)
    attn = Attention(query_dim=CHANNELS, heads=HEADS, dim_head=CHANNELS // HEADS, out_bias=True)
    processor = processor_cls(attn, num_views)
    processor.init_from(attn)
    with torch.no_grad():
        processor.to_out_mv[0].weight.normal_()
        # Silence the per-view spatial attention so the perturbed view shows only the MV coupling.
        attn.to_out[0].weight.zero_()
    return attn, processor


def _changed(attn, processor, num_views, objects, view, row, col):
    """Boolean [objects, views, H, W]: which output tokens move when one input token is perturbed."""
    torch.manual_seed(1)
    x = torch.randn(objects * num_views, SIDE * SIDE, CHANNELS)
    y = x.clone()
    y[(objects - 1) * num_views + view, row * SIDE + col] += 3.0
    with torch.no_grad():
        delta = (processor(attn, y, num_views=num_views) - processor(attn, x, num_views=num_views)).abs()
    return (delta.amax(-1) > 1e-6).reshape(objects, num_views, SIDE, SIDE)


def _expected(objects, num_views, rows=(), cols=()):
    """rows/cols: (view, index) pairs marking whole rows/columns of the last object as changed."""
    mask = torch.zeros(objects, num_views, SIDE, SIDE, dtype=torch.bool)
    for view, i in rows:
        mask[-1, view, i, :] = True
    for view, j in cols:
        mask[-1, view, :, j] = True
    return mask


def test_row_attention_couples_only_the_same_row_across_views():
    num_views = 5  # t2mv works for any view count
    attn, processor = _layer(RowMVAttnProcessor, num_views)
    changed = _changed(attn, processor, num_views, objects=2, view=4, row=2, col=1)
    # Only the perturbed object, row 2 of every view; the other object in the batch is untouched.
    assert torch.equal(changed, _expected(2, num_views, rows=[(v, 2) for v in range(num_views)]))


def test_row_col_top_view_column_meets_mirrored_front_back_and_bottom():
    attn, processor = _layer(RowColMVAttnProcessor, 6)
    changed = _changed(attn, processor, 6, objects=1, view=4, row=1, col=0)
    expected = _expected(1, 6, cols=[(0, SIDE - 1), (2, 0), (4, 0), (5, 0)])
    assert torch.equal(changed, expected)


def test_row_col_right_view_row_reaches_side_views_only():
    attn, processor = _layer(RowColMVAttnProcessor, 6)
    changed = _changed(attn, processor, 6, objects=1, view=1, row=2, col=1)
    assert torch.equal(changed, _expected(1, 6, rows=[(0, 2), (1, 2), (2, 2), (3, 2)]))


def test_row_col_front_view_reaches_rows_and_mirrored_columns():
    attn, processor = _layer(RowColMVAttnProcessor, 6)
    changed = _changed(attn, processor, 6, objects=2, view=0, row=1, col=1)
    mirrored = SIDE - 1 - 1
    expected = _expected(
        2, 6, rows=[(v, 1) for v in range(4)], cols=[(0, 1), (2, mirrored), (4, mirrored), (5, mirrored)]
    )
    assert torch.equal(changed, expected)


def _naive_row_col(q, k, v):
    """Spec §1b written token by token: softmax over the row/column key sets, average where both apply."""
    _, views, heads, side, _, dim = q.shape
    out = torch.zeros_like(q)

    def attend(query, keys, values):
        weights = torch.softmax(torch.stack([query @ key for key in keys]) / dim**0.5, dim=0)
        return sum(w * value for w, value in zip(weights, values))

    def col_token(x, view, i, j):  # column-group coordinates: the front view is mirrored
        return x[0, view, :, i, side - 1 - j] if view == 0 else x[0, view, :, i, j]

    for h, view, i, j in itertools.product(range(heads), range(views), range(side), range(side)):
        results = []
        if view in (0, 1, 2, 3):
            keys = [k[0, u, h, i, jj] for u in (0, 1, 2, 3) for jj in range(side)]
            values = [v[0, u, h, i, jj] for u in (0, 1, 2, 3) for jj in range(side)]
            results.append(attend(q[0, view, h, i, j], keys, values))
        if view in (0, 2, 4, 5):
            jc = side - 1 - j if view == 0 else j  # this token's column in the mirrored frame
            keys = [col_token(k, u, ii, jc)[h] for u in (0, 2, 4, 5) for ii in range(side)]
            values = [col_token(v, u, ii, jc)[h] for u in (0, 2, 4, 5) for ii in range(side)]
            results.append(attend(q[0, view, h, i, j], keys, values))
        out[0, view, h, i, j] = sum(results) / len(results)
    return out


def test_row_col_attention_matches_the_spec_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 3, 3, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(row_col_attention(q, k, v), _naive_row_col(q, k, v), rtol=1e-10, atol=1e-10)


def test_hard_wired_groups_follow_the_shared_tg2mv_view_order():
    from mvtune.models.attention import _COL_VIEWS, _ROW_VIEWS, TG2MV_VIEWS

    assert [TG2MV_VIEWS[i] for i in _ROW_VIEWS] == ["front", "right", "back", "left"]
    assert [TG2MV_VIEWS[i] for i in _COL_VIEWS] == ["front", "back", "top", "bottom"]


def test_fresh_processor_equals_plain_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=CHANNELS, heads=HEADS, dim_head=CHANNELS // HEADS, out_bias=True)
    x = torch.randn(6, SIDE * SIDE, CHANNELS)
    base = AttnProcessor2_0()(attn, x)
    processor = RowColMVAttnProcessor(attn, 6)
    processor.init_from(attn)
    assert torch.equal(processor(attn, x, num_views=6), base)


# --- whole UNet -----------------------------------------------------------------------------------


def _unet_inputs(batch, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, side // 8, side // 8, generator=g),
        "timestep": 500,
        "encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch, dtype=torch.float32),
        },
    }


@pytest.fixture(scope="module")
def base_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def _run(unet, inputs, features=None, **attention_kwargs):
    with torch.no_grad():
        return unet(
            **inputs,
            down_intrablock_additional_residuals=[f.clone() for f in features] if features else None,
            cross_attention_kwargs=attention_kwargs or None,
        ).sample


@pytest.mark.parametrize("variant", ["t2mv", "tg2mv"])
def test_adapted_unet_equals_base_at_init_and_at_mv_scale_zero(base_unet, variant):
    unet = copy.deepcopy(base_unet)
    cond_encoder = attach_mv_adapter(unet, variant=variant)
    inputs = _unet_inputs(6)
    with torch.no_grad():
        features = cond_encoder(torch.rand(6, 6, 64, 64))
    assert [tuple(f.shape) for f in features] == [(6, 32, 4, 4), (6, 64, 4, 4), (6, 128, 2, 2), (6, 128, 2, 2)]

    reference = _run(base_unet, inputs, features)
    assert (_run(unet, inputs, features, num_views=6, mv_scale=1.0) - reference).abs().max().item() == 0.0

    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "to_out_mv" in name:
                param.normal_(std=0.1)
    assert (_run(unet, inputs, features, num_views=6, mv_scale=0.0) - reference).abs().max().item() == 0.0
    assert (_run(unet, inputs, features, num_views=6, mv_scale=1.0) - reference).abs().max().item() > 1e-4


def test_mv_branch_starts_as_copy_of_spatial_attention(base_unet):
    unet = copy.deepcopy(base_unet)
    attach_mv_adapter(unet, variant="t2mv", num_views=4)
    layers = [m for n, m in unet.named_modules() if n.endswith("attn1")]
    assert len(layers) == 17
    for attn in layers:
        assert torch.equal(attn.processor.to_q_mv.weight, attn.to_q.weight)
        assert torch.equal(attn.processor.to_k_mv.weight, attn.to_k.weight)
        assert torch.equal(attn.processor.to_v_mv.weight, attn.to_v.weight)
        assert not attn.processor.to_out_mv[0].weight.any() and not attn.processor.to_out_mv[0].bias.any()


def test_t2mv_runs_with_four_views_and_two_objects(base_unet):
    unet = copy.deepcopy(base_unet)
    cond_encoder = attach_mv_adapter(unet, variant="t2mv", num_views=4)
    with torch.no_grad():
        features = cond_encoder(torch.rand(8, 6, 64, 64))
    out = _run(unet, _unet_inputs(8), features, num_views=4, mv_scale=1.0)
    assert out.shape == (8, 4, 8, 8) and torch.isfinite(out).all()


def test_tg2mv_rejects_other_view_counts(base_unet):
    with pytest.raises(MVAdapterError, match="6"):
        attach_mv_adapter(copy.deepcopy(base_unet), variant="tg2mv", num_views=4)
    unet = copy.deepcopy(base_unet)
    attach_mv_adapter(unet, variant="tg2mv")
    with pytest.raises(MVAdapterError, match="exactly 6 views"):
        _run(unet, _unet_inputs(8), num_views=4)
    with pytest.raises(MVAdapterError, match="variant"):
        attach_mv_adapter(copy.deepcopy(base_unet), variant="i2mv")


def test_gradients_reach_only_adapter_parameters(base_unet):
    unet = copy.deepcopy(base_unet).train()
    cond_encoder = attach_mv_adapter(unet, variant="tg2mv")
    unet.requires_grad_(False)
    for name, param in unet.named_parameters():
        param.requires_grad_("_mv" in name)
    features = cond_encoder(torch.rand(6, 6, 64, 64))
    out = unet(**_unet_inputs(6), down_intrablock_additional_residuals=features,
               cross_attention_kwargs={"num_views": 6}).sample
    out.square().mean().backward()
    mv_grads = [p.grad for n, p in unet.named_parameters() if "to_out_mv" in n]
    assert mv_grads and all(g is not None and g.abs().sum() > 0 for g in mv_grads)
    assert all(p.grad is not None for p in cond_encoder.parameters())
    assert all(p.grad is None for n, p in unet.named_parameters() if "_mv" not in n)
