"""The temporal model's Transformer (SDPA attention, FastLinear layers) against nn.MultiheadAttention, a
float64 reference and the nn.TransformerEncoder it replaced: same initial weights, same outputs and gradients
with and without padding and causal masks, and old checkpoints load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from affectmae.models import fast_linear as fl
from affectmae.models import temporal
from affectmae.models.fast_linear import FastLinear
from affectmae.models.temporal import (
    SelfAttention,
    TemporalConfig,
    TemporalModel,
    TorchTransformerEncoder,
    attention_mask,
    load_temporal,
    save_temporal,
)

BACKENDS = ["aten", pytest.param("onednn", marks=pytest.mark.skipif(not fl.onednn_available(), reason="no oneDNN"))]
LENGTHS = [12, 7, 1]  # real frames per batch row of T=12; the rest is end padding, as in the last window


@pytest.fixture(params=BACKENDS)
def gemm_backend(request):
    """Run the test with FastLinear on aten and on oneDNN; put the process's own choice back afterwards."""
    saved = fl._backend
    fl.set_cpu_gemm_backend(request.param)
    yield request.param
    fl._backend = saved


def _unpadded(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def _attention_float64(x, w_in, b_in, w_out, b_out, heads, unpadded, causal):
    """Softmax attention written out in float64. x: (B, T, C) -> (B, T, C)."""
    x, w_in, b_in, w_out, b_out = (t.detach().double() for t in (x, w_in, b_in, w_out, b_out))
    B, T, C = x.shape
    hs = C // heads
    q, k, v = (x @ w_in.T + b_in).split(C, dim=2)
    q, k, v = (z.reshape(B, T, heads, hs).permute(0, 2, 1, 3) for z in (q, k, v))  # (B, nh, T, hs)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)  # (B, nh, T, T)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if unpadded is not None:
        allowed &= unpadded[:, None, None, :]
    if causal:
        allowed &= torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ w_out.T + b_out


def test_attention_mask_values():
    unpadded = _unpadded([3, 1], 3)
    keys = attention_mask(unpadded, causal=False, length=3)
    assert keys.shape == (2, 1, 1, 3)
    assert keys[:, 0, 0].tolist() == [[True, True, True], [True, False, False]]
    both = attention_mask(unpadded, causal=True, length=3)
    assert both.shape == (2, 1, 3, 3)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert both[1, 0].tolist() == [[True, False, False], [True, False, False], [True, False, False]]
    assert attention_mask(None, causal=True, length=3) is None


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_multihead_attention_and_float64(gemm_backend, padded, causal):
    torch.manual_seed(0)
    B, T, C, heads = 3, 12, 16, 4
    mha = nn.MultiheadAttention(C, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    ours = SelfAttention(C, heads, dropout=0.0)
    ours.load_state_dict(mha.state_dict())  # same keys, same shapes
    temporal.use_fast_linear(ours)
    assert type(ours.out_proj) is FastLinear
    unpadded = _unpadded(LENGTHS, T) if padded else None

    x = torch.randn(B, T, C)
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    causal_mask = nn.Transformer.generate_square_subsequent_mask(T) if causal else None
    ref, _ = mha(x_ref, x_ref, x_ref, key_padding_mask=None if unpadded is None else ~unpadded, attn_mask=causal_mask,
                 need_weights=False)
    got = ours(x_ours, attention_mask(unpadded, causal, T), is_causal=causal and unpadded is None)
    assert got.shape == (B, T, C)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    exact = _attention_float64(x, ours.in_proj_weight, ours.in_proj_bias, ours.out_proj.weight, ours.out_proj.bias,
                               heads, unpadded, causal)
    torch.testing.assert_close(got.double(), exact, atol=2e-6, rtol=1e-5)

    grad = torch.randn(B, T, C)
    ref.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, mha.get_parameter(name).grad, atol=1e-5, rtol=1e-5, msg=name)
    if padded:  # padded frames have no say in the real frames' outputs
        x2 = x.clone()
        x2[1, 7:] += 100 * torch.randn(5, C)
        moved = ours(x2, attention_mask(unpadded, causal, T))
        assert torch.equal(moved[1, :7], got[1, :7].detach())
        assert not torch.allclose(moved[1, 7:], got[1, 7:].detach())


def _cfg(**kw) -> TemporalConfig:
    base = dict(input_dim=6, tasks=["va", "expr", "au"], tcn_channels=[16, 16], transformer_heads=4,
                transformer_ff=32, head_hidden=8, dropout=0.0)
    return TemporalConfig(**{**base, **kw})


def _old_model(cfg: TemporalConfig, monkeypatch) -> TemporalModel:
    """The reference form of the model: nn.TransformerEncoder and plain nn.Linear layers."""
    with monkeypatch.context() as m:
        m.setattr(temporal, "TransformerEncoder", TorchTransformerEncoder)
        m.setattr(temporal, "use_fast_linear", lambda module: module)
        return TemporalModel(cfg)


@pytest.mark.parametrize("causal", [False, True])
def test_same_seed_gives_the_old_models_initial_weights(monkeypatch, causal):
    cfg = _cfg(causal=causal)
    torch.manual_seed(3)
    old = _old_model(cfg, monkeypatch)
    torch.manual_seed(3)
    new = TemporalModel(cfg)
    assert isinstance(old.transformer, nn.TransformerEncoder) and not isinstance(new.transformer, nn.TransformerEncoder)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)
    for key, value in old_state.items():
        assert torch.equal(new_state[key], value), key
    assert {type(m) for m in new.modules() if isinstance(m, nn.Linear)} == {FastLinear}
    assert {type(m) for m in old.modules() if isinstance(m, nn.Linear)} != {FastLinear}


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter its own random values (the copies of one initial layer differ afterwards)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("causal", [False, True])
def test_model_outputs_and_gradients_unchanged_vs_torch_transformer(gemm_backend, monkeypatch, causal):
    cfg = _cfg(causal=causal)
    torch.manual_seed(0)
    old = _perturbed(_old_model(cfg, monkeypatch), 1)
    new = TemporalModel(cfg)
    new.load_state_dict(old.state_dict())
    B, T = 3, 12
    x = torch.randn(B, T, 6)
    for unpadded in (None, _unpadded(LENGTHS, T)):
        with torch.no_grad():  # eval + no_grad: nn.TransformerEncoder may take its fused inference path
            a, b = old.eval()(x, unpadded=unpadded), new.eval()(x, unpadded=unpadded)
        for task in ("va", "expr", "au"):
            assert b[task].shape == a[task].shape == (B, T, temporal.get_task(task).num_outputs)
            torch.testing.assert_close(b[task], a[task], atol=1e-5, rtol=1e-5)
        old.train(), new.train()
        old.zero_grad(), new.zero_grad()
        sum(v.square().sum() for v in old(x, unpadded=unpadded).values()).backward()
        sum(v.square().sum() for v in new(x, unpadded=unpadded).values()).backward()
        old_params = dict(old.named_parameters())
        for name, p in new.named_parameters():
            torch.testing.assert_close(p.grad, old_params[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_checkpoint_written_with_torch_transformer_loads(tmp_path, monkeypatch):
    cfg = _cfg(causal=True)
    torch.manual_seed(0)
    old = _perturbed(_old_model(cfg, monkeypatch), 2).eval()
    save_temporal(tmp_path / "old.safetensors", old, {"window": 12})
    loaded, meta = load_temporal(tmp_path / "old.safetensors")
    assert meta["window"] == 12 and isinstance(loaded.transformer, temporal.TransformerEncoder)
    x, unpadded = torch.randn(3, 12, 6), _unpadded(LENGTHS, 12)
    with torch.no_grad():
        a, b = old(x, unpadded=unpadded), loaded(x, unpadded=unpadded)
    for task in a:
        torch.testing.assert_close(b[task], a[task], atol=1e-5, rtol=1e-5)


def test_transformer_calls_sdpa_once_per_layer(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        calls.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape), dropout_p, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)

    monkeypatch.setattr(temporal.F, "scaled_dot_product_attention", counting_sdpa)
    model = TemporalModel(_cfg(transformer_layers=3, dropout=0.3, causal=True))
    model.train()(torch.randn(2, 5, 6))
    model.eval()(torch.randn(2, 5, 6), unpadded=_unpadded([5, 3], 5))
    assert calls == [((2, 4, 5, 4), None, 0.3, True)] * 3 + [((2, 4, 5, 4), (2, 1, 5, 5), 0.0, False)] * 3


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="transformer width 16 is not divisible by transformer_heads=3"):
        TemporalModel(_cfg(transformer_heads=3))
