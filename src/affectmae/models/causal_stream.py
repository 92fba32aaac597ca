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

import math

import numpy as np
import torch
import torch.nn.functional as F

from affectmae.models.temporal import TemporalModel, postprocess


def _lin(x: torch.Tensor, layer) -> torch.Tensor:
    """A linear layer as a plain product: the stream's few rows are faster through BLAS than through oneDNN."""
    return F.linear(x, layer.weight, layer.bias)


class _TcnBlock:
    """One causal TCN block run forward in time: the last 2 (kernel - 1) dilation inputs and the last
    (kernel - 1) dilation outputs of its first convolution are kept (zeros before the track's first frame, as
    the whole sequence's left padding). Weights are read once (weight norm applied)."""

    def __init__(self, block):
        self.k, self.d = block.conv1.kernel_size[0], block.conv1.dilation[0]  # as the block was built
        w1, w2 = block.conv1.weight.detach(), block.conv2.weight.detach()  # (Cout, Cin, K)
        self.w1 = w1.permute(0, 2, 1).reshape(w1.shape[0], -1)  # (Cout, K * Cin), taps in time order
        self.w2 = w2.permute(0, 2, 1).reshape(w2.shape[0], -1)
        self.b1, self.b2 = block.conv1.bias.detach(), block.conv2.bias.detach()
        down = block.down
        self.down = None if isinstance(down, torch.nn.Identity) else (down.weight.detach()[:, :, 0], down.bias.detach())
        span = (self.k - 1) * self.d
        self.x_past = torch.zeros(span, w1.shape[1])  # inputs before the chunk
        self.y_past = torch.zeros(span, w1.shape[0])  # first-conv outputs before the chunk

    def _conv(self, seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_out: int) -> torch.Tensor:
        """Valid dilated convolution of ``seq (n_out + span, Cin)`` -> (n_out, Cout)."""
        taps = torch.cat([seq[i * self.d: i * self.d + n_out] for i in range(self.k)], dim=1)  # (n_out, K * Cin)
        return F.linear(taps, weight, bias)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x: (C, Cin) the next C positions -> (C, Cout)."""
        C = len(x)
        span = len(self.x_past)
        xs = torch.cat([self.x_past, x])  # (span + C, Cin)
        y1 = F.relu(self._conv(xs, self.w1, self.b1, C))  # (C, Cout): first conv at the new positions
        ys = torch.cat([self.y_past, y1])  # (span + C, Cout)
        y2 = F.relu(self._conv(ys, self.w2, self.b2, C))
        res = x if self.down is None else F.linear(x, *self.down)
        if span:
            self.x_past, self.y_past = xs[-span:], ys[-span:]
        return F.relu(y2 + res)


class CausalStream:
    """The state of a streaming :class:`TemporalModel` over one track; see the module docstring."""

    def __init__(self, model: TemporalModel):
        if not model.streaming:
            raise ValueError("CausalStream needs a streaming model (TemporalConfig causal=True with history > 0)")
        self.model = model.eval()
        cfg = model.cfg
        self.history = int(cfg.history)
        self._blocks = []
        if cfg.arch == "temporal" and cfg.use_tcn:
            with torch.no_grad():
                self._blocks = [_TcnBlock(b) for b in model.tcn.blocks]
        layers = model.transformer.layers if getattr(model, "transformer", None) is not None else []
        self._layers = list(layers)
        self._cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(layers)  # (nh, L, hs) each
        d = cfg.input_dim
        self._sums = (np.zeros(d), 0, np.zeros(d), 0)  # person reference: sum/count with a face, of all frames

    @torch.inference_mode()
    def step(self, x: np.ndarray | torch.Tensor, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """x: (C, D) the next C frames' features; present: (C,) bool (True: a face). -> {task: (C, n) float32}."""
        from affectmae.models.temporal import causal_reference

        model, cfg = self.model, self.model.cfg
        feats = np.asarray(x, dtype=np.float32)
        chunk = len(feats)
        pres = np.ones(chunk, bool) if present is None else np.asarray(present, dtype=bool)
        h = torch.from_numpy(feats)
        if model.missing is not None:
            h = torch.where(torch.from_numpy(pres)[:, None], h, model.missing.detach())
        if cfg.person_norm:
            ref = causal_reference(feats, pres, self._sums)
            f64, p = feats.astype(np.float64), pres[:, None]
            s_p, c_p, s_a, c_a = self._sums
            self._sums = (s_p + (f64 * p).sum(0), c_p + int(pres.sum()), s_a + f64.sum(0), c_a + chunk)
            h = torch.cat([h, h - torch.from_numpy(ref)], dim=-1)  # (C, 2D)
        if cfg.arch == "temporal":
            if cfg.use_tcn:
                for block in self._blocks:
                    h = block.step(h)  # (C, W)
            else:
                h = F.relu(_lin(h, model.tcn[0]))
            for i, layer in enumerate(self._layers):
                h = self._layer(i, layer, h)
        out = {}
        for spec in model.specs:  # as TemporalModel.forward: tanh on VA, then what users get
            head = model.heads[spec.name]
            y = _lin(h, head) if cfg.arch == "linear" else _lin(F.relu(_lin(h, head[0])), head[3])
            y = torch.tanh(y) if spec.kind == "regression" else y
            out[spec.name] = postprocess(spec.name, y).float().numpy()
        return out

    def _layer(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        """One pre-norm encoder layer for the C new positions, attending to the cached ones. x: (C, W)."""
        attn = layer.self_attn
        C, W = x.shape
        hs = W // attn.heads
        q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).split(W, dim=1)  # 3 x (C, W)
        q, k, v = (t.reshape(C, attn.heads, hs).transpose(0, 1) for t in (q, k, v))  # (nh, C, hs)
        if self._cache[i] is not None:
            k = torch.cat([self._cache[i][0], k], dim=1)  # (nh, L + C, hs)
            v = torch.cat([self._cache[i][1], v], dim=1)
        cached = k.shape[1] - C
        query = torch.arange(C)[:, None] + cached
        key = torch.arange(k.shape[1])[None, :]
        allowed = (key <= query) & (key > query - self.history)  # (C, L + C)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hs)  # (nh, C, L + C)
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = scores.softmax(-1) @ v  # (nh, C, hs)
        keep = self.history - 1
        self._cache[i] = (k[:, -keep:], v[:, -keep:]) if keep > 0 else None
        x = x + _lin(y.transpose(0, 1).reshape(C, W), attn.out_proj)
        return x + _lin(F.relu(_lin(layer.norm2(x), layer.linear1)), layer.linear2)


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
