"""A streaming temporal model run frame by frame (or a chunk of frames at a time) over one face track.

A streaming model (``TemporalConfig(causal=True, history=H)``) gives frame t an output that depends on
frames <= t only: a causal TCN (receptive field R frames) and attention layers that each look at the last
H positions, without an absolute position table. :class:`CausalStream` keeps what the next frame needs:
the last R inputs of the TCN, each attention layer's keys and values of the last H - 1 positions, and the
running sums of the person reference (:func:`~affectmae.models.temporal.causal_reference`). One step costs
one frame's work however long the track has run, and the outputs equal those of the model's ``forward``
over the whole sequence (same mask, same reference), whatever the chunk sizes.

    stream = CausalStream(model)
    for x, present in frames:                  # x: (C, D) float32 features, present: (C,) bool
        out = stream.step(x, present)          # {task: (C, num_outputs)} VA values, EXPR / AU probabilities
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from affectmae.models.fast_linear import fast_linear
from affectmae.models.temporal import TemporalModel, postprocess


def tcn_receptive_field(model: TemporalModel) -> int:
    """Frames before t that the causal TCN's output at t depends on: 2 (kernel - 1) dilation per block."""
    cfg = model.cfg
    if cfg.arch != "temporal" or not cfg.use_tcn:
        return 0
    dilations = list(cfg.tcn_dilations) or [2**i for i in range(len(cfg.tcn_channels))]
    return sum(2 * (cfg.tcn_kernel - 1) * d for d in dilations)


class CausalStream:
    """The state of a streaming :class:`TemporalModel` over one track; see the module docstring."""

    def __init__(self, model: TemporalModel):
        if not model.streaming:
            raise ValueError("CausalStream needs a streaming model (TemporalConfig causal=True with history > 0)")
        self.model = model.eval()
        self.history = int(model.cfg.history)
        self.device = next(model.parameters()).device
        self.n_frames = 0
        self.field = tcn_receptive_field(model)
        self._tcn_inputs: torch.Tensor | None = None  # (<= field, d) the last TCN inputs
        layers = model.transformer.layers if getattr(model, "transformer", None) is not None else []
        self._cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(layers)  # (nh, L, hs) each
        d = model.cfg.input_dim
        self._sums = (np.zeros(d), 0, np.zeros(d), 0)  # person reference: sum/count with a face, of all frames

    @torch.inference_mode()
    def step(self, x: np.ndarray | torch.Tensor, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """x: (C, D) the next C frames' features; present: (C,) bool (True: a face). -> {task: (C, n) float32}."""
        from affectmae.models.temporal import causal_reference

        model, cfg = self.model, self.model.cfg
        feats = np.asarray(x, dtype=np.float32)
        chunk = len(feats)
        pres = np.ones(chunk, bool) if present is None else np.asarray(present, dtype=bool)
        h = torch.from_numpy(feats).to(self.device)
        pres_t = torch.from_numpy(pres).to(self.device)
        if model.missing is not None:
            h = torch.where(pres_t[:, None], h, model.missing.to(h.dtype))
        if cfg.person_norm:
            ref = causal_reference(feats, pres, self._sums)
            f64, p = feats.astype(np.float64), pres[:, None]
            s_p, c_p, s_a, c_a = self._sums
            self._sums = (s_p + (f64 * p).sum(0), c_p + int(pres.sum()), s_a + f64.sum(0), c_a + chunk)
            h = torch.cat([h, h - torch.from_numpy(ref).to(self.device)], dim=-1)  # (C, 2D)
        if cfg.arch == "temporal":
            h = self._tcn(h)  # (C, W)
            for i, layer in enumerate(model.transformer.layers if model.transformer is not None else []):
                h = self._layer(i, layer, h)
        self.n_frames += chunk
        out = {}
        for spec in model.specs:  # as TemporalModel.forward: tanh on VA, then what users get
            y = model.heads[spec.name](h)
            y = torch.tanh(y) if spec.kind == "regression" else y
            out[spec.name] = postprocess(spec.name, y).float().cpu().numpy()
        return out

    def _tcn(self, h: torch.Tensor) -> torch.Tensor:
        if not self.model.cfg.use_tcn:
            return self.model.tcn(h)
        if self.field == 0:
            return self.model.tcn(h[None])[0]
        past = self._tcn_inputs
        seq = h if past is None else torch.cat([past, h])  # (L + C, d): the zero padding of a whole
        self._tcn_inputs = seq[-self.field:]  # sequence's start is the TCN's own left padding here too
        return self.model.tcn(seq[None])[0, -len(h):]

    def _layer(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        """One pre-norm encoder layer for the C new positions, attending to the cached ones. x: (C, W)."""
        attn = layer.self_attn
        C, W = x.shape
        hs = W // attn.heads
        q, k, v = fast_linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).split(W, dim=1)  # 3 x (C, W)
        q, k, v = (t.view(C, attn.heads, hs).transpose(0, 1) for t in (q, k, v))  # (nh, C, hs)
        if self._cache[i] is not None:
            k = torch.cat([self._cache[i][0], k], dim=1)  # (nh, L + C, hs)
            v = torch.cat([self._cache[i][1], v], dim=1)
        cached = k.shape[1] - C
        query = torch.arange(C, device=x.device)[:, None] + cached
        key = torch.arange(k.shape[1], device=x.device)[None, :]
        mask = (key <= query) & (key > query - self.history)  # (C, L + C)
        y = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask[None, None])[0]  # (nh, C, hs)
        keep = self.history - 1
        self._cache[i] = (k[:, -keep:], v[:, -keep:]) if keep > 0 else None
        x = x + attn.out_proj(y.transpose(0, 1).reshape(C, W))
        return x + layer.linear2(F.relu(layer.linear1(layer.norm2(x))))


@torch.no_grad()
def predict_causal(model: TemporalModel, features, present: np.ndarray | None, chunk: int = 256) -> dict[str, np.ndarray]:
    """A streaming model over a whole sequence, ``chunk`` frames at a time: features (N, D) (read slice by
    slice, so a memory-mapped array stays on disk), present (N,) bool or None -> {task: (N, C) float32}."""
    was_training = model.training
    stream = CausalStream(model)
    n = int(features.shape[0])
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk):
        pres = None if present is None else np.asarray(present[start:start + chunk], dtype=bool)
        out = stream.step(np.asarray(features[start:start + chunk], dtype=np.float32), pres)
        for name, y in out.items():
            parts.setdefault(name, []).append(y)
    model.train(was_training)
    return {name: np.concatenate(p).astype(np.float32) for name, p in parts.items()}
