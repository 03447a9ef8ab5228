"""Attention hands the fused (flash, memory-efficient) kernels the layout they take, in the project's U-Net and
in the published EDM networks, and gives the same result as before."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.networks import unet as unet_module
from pipeline.networks.published import edm_layers
from pipeline.networks.published.edm_layers import UNetBlock
from pipeline.networks.unet import Attention


def old_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """The layout before: q, k and v transposed views of NCHW, the head dim strided by h*w."""
    b, c, hgt, wid = x.shape
    q, k, v = module.qkv(module.norm(x)).reshape(b, 3, module.heads, c // module.heads, hgt * wid).unbind(1)
    h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return (x + module.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))) / math.sqrt(2)


def record_attention_inputs(monkeypatch) -> list[torch.Tensor]:
    """The tensors every later F.scaled_dot_product_attention call receives, in order."""
    seen, sdpa = [], F.scaled_dot_product_attention

    def recording(*tensors, **kwargs):
        seen.extend(tensors)
        return sdpa(*tensors, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_hands_fused_kernels_a_contiguous_head_dim(monkeypatch, channels_last):
    """On CUDA (stood in for here) SDPA gets a contiguous head dim; the CPU path is the old one, bit for bit."""
    torch.manual_seed(0)
    module = Attention(128)  # two heads of 64
    nn.init.normal_(module.proj.weight, std=0.1)
    x = torch.randn(3, 128, 8, 8)
    expected = old_attention(module, x)
    assert torch.equal(module(x), expected)  # CPU: the old path, bit for bit
    if channels_last:
        module, x = module.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    monkeypatch.setattr(unet_module, "fused_layout", lambda x: True)
    seen = record_attention_inputs(monkeypatch)
    out = module(x)
    assert len(seen) == 3 and all(t.shape == (3, 2, 64, 64) and t.stride(-1) == 1 for t in seen)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_edm_attention_hands_fused_kernels_four_dims_and_a_contiguous_head_dim(monkeypatch):
    """PyTorch's fused SDPA kernels take only (batch, heads, tokens, head dim) inputs; the published EDM block
    gives them that on CUDA (stood in for here) and the same output as the CPU path."""
    torch.manual_seed(0)
    block = UNetBlock(64, 64, 32, attention=True, num_heads=2)
    for p in block.parameters():
        nn.init.normal_(p, std=0.1)
    x, emb = torch.randn(3, 64, 8, 8), torch.randn(3, 32)
    expected = block(x, emb)
    monkeypatch.setattr(edm_layers, "fused_layout", lambda x: True)
    seen = record_attention_inputs(monkeypatch)
    out = block(x, emb)
    assert len(seen) == 3 and all(t.shape == (3, 2, 64, 32) and t.stride(-1) == 1 for t in seen)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
