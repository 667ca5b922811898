"""Attention inputs that keep packed conversations apart: a block-diagonal causal mask, or THD cu_seqlens.

A packed SFT sample carries ``segment_ids`` (which conversation each position belongs to). The
local and native specs (megatron-core's DotProductAttention) take an explicit mask [b, 1, s, s],
True where attention is forbidden; transformer-engine ignores a mask under its causal mask type,
so the te spec gets the THD form instead: ``PackedSeqParams`` with the conversations' boundaries
(micro_batch_size 1). RoPE needs nothing: megatron-core rotates by the position in the row, and a
conversation that starts at row position p sees every query-key pair at the same distance as
when it starts at 0, so its attention scores are those of the conversation alone.
"""

from __future__ import annotations

import torch


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where query i may not see key j: j > i, or another segment."""
    s = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal).unsqueeze(1)


def packed_seq_params(segment_ids: torch.Tensor):
    """megatron-core THD parameters for one packed row (shape [1, s]): cu_seqlens at the segment changes."""
    from megatron.core.packed_seq_params import PackedSeqParams

    if segment_ids.shape[0] != 1:
        raise ValueError("THD packing takes one row per microbatch (schedule.micro_batch_size=1)")
    seg = segment_ids[0]
    starts = torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1
    cu = torch.cat([seg.new_zeros(1), starts, seg.new_tensor([seg.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)
