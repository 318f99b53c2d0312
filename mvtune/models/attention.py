"""Decoupled multi-view self-attention for SDXL UNets (MV-Adapter, spec §1-§4).

Each self-attention layer (attn1) keeps its frozen spatial attention and gains a parallel multi-view branch
with its own projections: y = Attn(x) + mv_scale * MVAttn(x). The multi-view branch attends across the views
of one object along image rows (t2mv) or along rows and columns (tg2mv). The processors are nn.Modules so
their parameters appear in the UNet state dict under "<layer>.attn1.processor.to_{q,k,v,out}_mv...", the
key names of the released checkpoints.
"""

from __future__ import annotations

import abc
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import T2IAdapter, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from mvtune.cameras import variant_views
from mvtune.models.errors import MVAdapterError

logger = logging.getLogger(__name__)

# tg2mv is trained on exactly this view order; the row/column groups below depend on it.
TG2MV_VIEWS = variant_views("tg2mv").names
_ROW_VIEWS = [0, 1, 2, 3]  # front, right, back, left
_COL_VIEWS = [0, 2, 4, 5]  # front (mirrored left-right), back, top, bottom


def _split_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """[B*N, heads, H*W, d] -> [B, N, heads, H, W, d] (square token grid, views of an object contiguous)."""
    batch_views, heads, length, dim = x.shape
    if batch_views % num_views:
        raise MVAdapterError(f"UNet batch {batch_views} is not a multiple of num_views={num_views}")
    side = math.isqrt(length)
    if side * side != length:
        raise MVAdapterError(f"multi-view attention needs a square token grid, got {length} tokens")
    return x.reshape(batch_views // num_views, num_views, heads, side, side, dim)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each token attends to its own row in every view. Inputs/output: [B, N, heads, H, W, d]."""
    b, n, h, rows, cols, d = q.shape

    def to_rows(x):
        return x.permute(0, 3, 2, 1, 4, 5).reshape(b * rows, h, n * cols, d)

    out = F.scaled_dot_product_attention(to_rows(q), to_rows(k), to_rows(v))
    return out.reshape(b, rows, h, n, cols, d).permute(0, 3, 2, 1, 4, 5)


def column_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each token attends to its own column in every view. Inputs/output: [B, N, heads, H, W, d]."""
    b, n, h, rows, cols, d = q.shape

    def to_cols(x):
        return x.permute(0, 4, 2, 1, 3, 5).reshape(b * cols, h, n * rows, d)

    out = F.scaled_dot_product_attention(to_cols(q), to_cols(k), to_cols(v))
    return out.reshape(b, cols, h, n, rows, d).permute(0, 3, 2, 4, 1, 5)


def row_col_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """tg2mv coupling for views (front, right, back, left, top, bottom); inputs/output [B, 6, heads, H, W, d].

    Rows tie the four side views; columns tie the mirrored front view to back, top and bottom (so column j of
    back/top/bottom meets column W-1-j of the front image). Views in both groups take the plain average of
    the two independently normalised attentions.
    """
    rows = row_attention(q[:, _ROW_VIEWS], k[:, _ROW_VIEWS], v[:, _ROW_VIEWS])

    def col_group(x):
        x = x[:, _COL_VIEWS].clone()
        x[:, 0] = x[:, 0].flip(-2)
        return x

    cols = column_attention(col_group(q), col_group(k), col_group(v))
    front_col = cols[:, 0].flip(-2)
    return torch.stack(
        [
            (rows[:, 0] + front_col) / 2,
            rows[:, 1],
            (rows[:, 2] + cols[:, 1]) / 2,
            rows[:, 3],
            cols[:, 2],
            cols[:, 3],
        ],
        dim=1,
    )


class MVSelfAttnProcessor(nn.Module, abc.ABC):
    """Self-attention of the base layer plus a parallel, trainable multi-view attention branch.

    `num_views` and `mv_scale` come per call through the UNet's cross_attention_kwargs; the view count given
    at construction is only the default (unlike the reference, a call does not overwrite it).
    """

    def __init__(self, attn: Attention, num_views: int):
        super().__init__()
        factory = {"device": attn.to_q.weight.device, "dtype": attn.to_q.weight.dtype}
        query_dim, inner_dim = attn.to_q.in_features, attn.to_q.out_features
        self.num_views = num_views
        self.to_q_mv = nn.Linear(query_dim, inner_dim, bias=False, **factory)
        self.to_k_mv = nn.Linear(query_dim, inner_dim, bias=False, **factory)
        self.to_v_mv = nn.Linear(query_dim, inner_dim, bias=False, **factory)
        self.to_out_mv = nn.ModuleList(
            [nn.Linear(inner_dim, attn.to_out[0].out_features, bias=True, **factory), nn.Dropout(0.0)]
        )

    @torch.no_grad()
    def init_from(self, attn: Attention) -> None:
        """Start as a clone of the spatial attention with a zero output: the adapted UNet equals the base UNet."""
        self.to_q_mv.weight.copy_(attn.to_q.weight)
        self.to_k_mv.weight.copy_(attn.to_k.weight)
        self.to_v_mv.weight.copy_(attn.to_v.weight)
        self.to_out_mv[0].weight.zero_()
        self.to_out_mv[0].bias.zero_()

    @abc.abstractmethod
    def mv_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_views: int) -> torch.Tensor:
        """Multi-view attention on [B, N, heads, H, W, d] tensors."""

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int | None = None,
        mv_scale: float = 1.0,
    ) -> torch.Tensor:
        # The main branch follows diffusers' AttnProcessor2_0 step by step so that a zero MV branch
        # reproduces the base layer bit for bit.
        num_views = self.num_views if num_views is None else num_views
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        def heads(x):
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)

        # Multi-view branch: same normalised input, same head count, no mask (views are full token grids).
        q_mv, k_mv, v_mv = (
            _split_views(heads(proj(hidden_states)), num_views)
            for proj in (self.to_q_mv, self.to_k_mv, self.to_v_mv)
        )
        mv = self.mv_attention(q_mv, k_mv, v_mv, num_views)
        b, n, h, rows, cols, d = mv.shape
        mv = mv.permute(0, 1, 3, 4, 2, 5).reshape(b * n, rows * cols, h * d).to(query.dtype)
        mv = self.to_out_mv[1](self.to_out_mv[0](mv))
        out = out + mv_scale * mv

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_views=None, mv_scale=1.0):
        # diffusers filters cross_attention_kwargs by this signature, so the MV kwargs must be named here.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, num_views, mv_scale)


class RowMVAttnProcessor(MVSelfAttnProcessor):
    """t2mv: row attention across any number of views."""

    def mv_attention(self, q, k, v, num_views):
        return row_attention(q, k, v)


class RowColMVAttnProcessor(MVSelfAttnProcessor):
    """tg2mv: row attention over the side views + column attention over front/back/top/bottom."""

    def mv_attention(self, q, k, v, num_views):
        if num_views != len(TG2MV_VIEWS):
            raise MVAdapterError(
                f"tg2mv attention is wired for exactly 6 views {TG2MV_VIEWS}, got num_views={num_views}; "
                "use variant='t2mv' for other view counts"
            )
        return row_col_attention(q, k, v)


class CrossAttnProcessor(AttnProcessor2_0):
    """Plain SDPA cross-attention that accepts (and ignores) the multi-view kwargs, so diffusers does not warn."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_views=None, mv_scale=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


_PROCESSORS = {"t2mv": RowMVAttnProcessor, "tg2mv": RowColMVAttnProcessor}


def default_cond_channels(unet: UNet2DConditionModel) -> list[int]:
    """One feature map per down block plus one for the mid block (320/640/1280/1280 for SDXL)."""
    channels = list(unet.config.block_out_channels)
    return channels + [channels[-1]]


def attach_mv_adapter(
    unet: UNet2DConditionModel,
    variant: str = "tg2mv",
    num_views: int = 6,
    cond_in_channels: int = 6,
    cond_channels: list[int] | None = None,
) -> T2IAdapter:
    """Install MV processors on every attn1 of `unet` (in place, initialised per spec §3); return the cond encoder.

    The returned T2IAdapter's outputs go to the UNet as `down_intrablock_additional_residuals`; pass
    `cross_attention_kwargs={"num_views": N, "mv_scale": s}` to the UNet call.
    """
    if variant not in _PROCESSORS:
        raise MVAdapterError(f"unknown MV-Adapter variant {variant!r}; expected one of {tuple(_PROCESSORS)}")
    if variant == "tg2mv" and num_views != len(TG2MV_VIEWS):
        raise MVAdapterError(
            f"tg2mv needs num_views=6 in the order {TG2MV_VIEWS}, got {num_views}; use variant='t2mv' instead"
        )
    processor_cls = _PROCESSORS[variant]
    modules = dict(unet.named_modules())
    processors = {}
    for name in unet.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        if name.endswith("attn1.processor"):
            processor = processor_cls(attn, num_views)
            processor.init_from(attn)
            processors[name] = processor
        else:
            processors[name] = CrossAttnProcessor()
    unet.set_attn_processor(processors)
    n_mv = sum(isinstance(p, MVSelfAttnProcessor) for p in unet.attn_processors.values())
    logger.debug("attached %s processors to %d self-attention layers", processor_cls.__name__, n_mv)

    device = unet.conv_in.weight.device
    with torch.device(device):
        cond_encoder = T2IAdapter(
            in_channels=cond_in_channels,
            channels=list(cond_channels or default_cond_channels(unet)),
            num_res_blocks=2,
            downscale_factor=16,
            adapter_type="full_adapter_xl",
        )
    if cond_encoder.dtype != unet.dtype:
        cond_encoder.to(dtype=unet.dtype)
    return cond_encoder


def mv_parameters(unet: UNet2DConditionModel) -> list[nn.Parameter]:
    """The trainable adapter parameters inside the UNet (everything whose name contains "_mv")."""
    return [p for name, p in unet.named_parameters() if "_mv" in name]
