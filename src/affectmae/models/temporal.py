"""The temporal model: frame features -> TCN -> Transformer encoder -> one MLP head per task.

One model class serves VA, EXPR, AU and the multi-task setting; the heads are built from the task table
(:data:`affectmae.tasks.TASKS`). Differences from the authors' code:

- the TCN looks both ways by default (``causal=False``); ``causal=True`` only looks back; with ``history`` too,
  a streaming model that runs frame by frame on a live source (``models/causal_stream.py``);
- the Transformer gets a sinusoidal positional encoding (theirs has none; not in a streaming model);
- weight norm uses ``torch.nn.utils.parametrizations.weight_norm`` (or none);
- padded frames are excluded from attention and zeroed before the convolutions;
- attention runs through ``F.scaled_dot_product_attention`` and every linear layer through
  :class:`~affectmae.models.fast_linear.FastLinear` (oneDNN on CPUs where it beats MKL), with the
  parameter names of ``nn.TransformerEncoder``, so older checkpoints load unchanged;
- frames without a face can be replaced by a learned "missing" embedding (``missing_embedding=True``).

``arch="linear"`` gives the per-frame linear baseline on the same features (no temporal context).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from affectmae.models.fast_linear import fast_linear, use_fast_linear
from affectmae.models.person_reference import causal_reference, person_reference  # noqa: F401 (re-exported)
from affectmae.tasks import get_task


@dataclass
class TemporalConfig:
    arch: str = field(default="temporal", metadata={"choices": ("temporal", "linear")})  # "temporal" (TCN + Transformer + MLP) | "linear" (per-frame baseline)
    input_dim: int = field(default=768, metadata={"min": 1})  # set from the feature store when training
    tasks: list[str] = field(default_factory=lambda: ["va"])
    use_tcn: bool = True  # ablation "w/o TCN": a linear projection to the TCN's output width instead
    tcn_channels: list[int] = field(default_factory=lambda: [512, 256], metadata={"min": 1})
    tcn_kernel: int = field(default=3, metadata={"min": 1})
    tcn_dilations: list[int] = field(default_factory=list, metadata={"min": 1})  # empty: 1, 2, 4, ... per block
    causal: bool = False
    # with causal: attention looks back at most this many frames (itself included), no position table: a
    # streaming model, run frame by frame by models/causal_stream.py (0: positions within the window)
    history: int = field(default=0, metadata={"min": 0})
    weight_norm: bool = True
    use_transformer: bool = True  # ablation "w/o Transformer"
    transformer_layers: int = field(default=2, metadata={"min": 1})
    transformer_heads: int = field(default=4, metadata={"min": 1})  # must divide the width, tcn_channels[-1]
    transformer_ff: int = field(default=512, metadata={"min": 1})
    head_hidden: int = field(default=128, metadata={"min": 1})
    dropout: float = field(default=0.3, metadata={"min": 0, "lt": 1})
    missing_embedding: bool = False
    # Person-specific normalisation (as OpenFace's AU models do): every frame also carries its feature minus
    # the mean feature of its video (face track) over frames with a face, so what changes within a person
    # is separated from who the person is. The input width doubles; the reference comes from
    # `person_reference` over the whole sequence, in training, validation, predict and analyze alike.
    person_norm: bool = False

    def check(self, prefix: str = "") -> None:
        """Settings that depend on each other (checked by affectmae.config when a config is built)."""
        from affectmae.errors import AffectMAEError

        if not self.tcn_channels:
            raise AffectMAEError(f"{prefix}tcn_channels must name at least one width")
        if self.tcn_dilations and len(self.tcn_dilations) != len(self.tcn_channels):
            raise AffectMAEError(f"{prefix}tcn_dilations has {len(self.tcn_dilations)} entries but "
                                 f"{prefix}tcn_channels has {len(self.tcn_channels)}")
        if self.history and not self.causal:
            raise AffectMAEError(f"{prefix}history={self.history} needs {prefix}causal=true")
        width = self.tcn_channels[-1]
        if self.arch == "temporal" and self.use_transformer and width % self.transformer_heads:
            raise AffectMAEError(f"{prefix}transformer_heads must divide the transformer width "
                                 f"({prefix}tcn_channels[-1] = {width}), got {self.transformer_heads}")


def _conv(cin: int, cout: int, kernel: int, dilation: int, use_wn: bool) -> nn.Module:
    conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)
    return weight_norm(conv) if use_wn else conv


class TemporalBlock(nn.Module):
    """Two dilated 1-D convolutions with a residual connection. x: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, dropout: float, causal: bool, use_wn: bool):
        super().__init__()
        total = (kernel - 1) * dilation
        # causal: all padding on the left; otherwise split it so output frame t is centred on input frame t
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)
        self.conv1 = _conv(cin, cout, kernel, dilation, use_wn)
        self.conv2 = _conv(cout, cout, kernel, dilation, use_wn)
        self.drop = nn.Dropout(dropout)
        self.act = nn.ReLU()
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """keep: (B, 1, T) 1.0 on frames of the video, 0.0 on padding, so padding acts like the convs' zero padding."""
        y = self.drop(self.act(self.conv1(nn.functional.pad(x, self.pad))))
        y = y if keep is None else y * keep
        y = self.drop(self.act(self.conv2(nn.functional.pad(y, self.pad))))
        y = self.act(y + self.down(x))
        return y if keep is None else y * keep


class TCN(nn.Module):
    """A stack of residual dilated conv blocks. x: (B, T, D) -> (B, T, channels[-1])."""

    def __init__(self, input_dim: int, channels: list[int], kernel: int, dilations: list[int], dropout: float,
                 causal: bool, use_wn: bool):
        super().__init__()
        dilations = list(dilations) or [2**i for i in range(len(channels))]
        if len(dilations) != len(channels):
            raise ValueError(f"tcn_dilations has {len(dilations)} entries but tcn_channels has {len(channels)}")
        dims = [input_dim, *channels]
        self.blocks = nn.Sequential(
            *(TemporalBlock(dims[i], dims[i + 1], kernel, dilations[i], dropout, causal, use_wn) for i in range(len(channels)))
        )

    def forward(self, x: torch.Tensor, unpadded: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); unpadded: (B, T) bool, False on padding -> (B, T, C)."""
        keep = None if unpadded is None else unpadded[:, None, :].to(x.dtype)
        y = x.transpose(1, 2)
        for block in self.blocks:
            y = block(y, keep)
        return y.transpose(1, 2)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention is all you need". -> (length, dim)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Parameters and state-dict keys are ``nn.MultiheadAttention``'s (``in_proj_weight`` (3C, C),
    ``in_proj_bias`` (3C,), ``out_proj``), and so is the initialisation, in the same order of random draws,
    so checkpoints written with the ``nn.TransformerEncoder`` this replaces load unchanged.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by transformer_heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x: (B, T, C); mask: bool, broadcastable to (B, nh, T, T), True where a query may attend to a key.
        ``is_causal`` (only without ``mask``): each frame attends to itself and the frames before it."""
        B, T, C = x.shape
        q, k, v = fast_linear(x, self.in_proj_weight, self.in_proj_bias).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer (``nn.TransformerEncoderLayer(norm_first=True)``, ReLU, with the same
    submodule names). x: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), mask, is_causal))
        return x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(self.norm2(x))))))


def attention_mask(unpadded: torch.Tensor | None, causal: bool, length: int, history: int = 0,
                   device=None) -> torch.Tensor | None:
    """The bool attention mask for :class:`SelfAttention`: (B, 1, 1, T) keys that are frames of the video,
    (T, T) frames at or before the query when ``causal`` (and, with ``history``, fewer than ``history`` frames
    before it), (B, 1, T, T) both; ``None`` when neither restricts (``causal`` alone is then passed as
    ``is_causal``). unpadded: (B, T), False on padding."""
    device = unpadded.device if unpadded is not None else device
    band = None
    if causal and 0 < history < length:
        i = torch.arange(length, device=device)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - history)  # (T, T)
    if unpadded is None:
        return band
    keys = unpadded[:, None, None, :]  # (B, 1, 1, T)
    if not causal:
        return keys
    past = band if band is not None else torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return keys & past  # (B, 1, T, T)


class TransformerEncoder(nn.Module):
    """``layers`` copies of one :class:`EncoderLayer` (like ``nn.TransformerEncoder``: every layer starts
    from the same initial weights; state-dict keys ``layers.<i>.*`` are the same). x: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, layers: int):
        super().__init__()
        layer = EncoderLayer(dim, heads, ff, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(layers))

    def forward(self, x: torch.Tensor, unpadded: torch.Tensor | None = None, causal: bool = False,
                history: int = 0) -> torch.Tensor:
        """unpadded: (B, T) False on padding (excluded as keys); ``causal``: attend only to the past (with
        ``history``: to fewer than ``history`` frames before each query)."""
        mask = attention_mask(unpadded, causal, x.shape[1], history, x.device)
        for layer in self.layers:
            x = layer(x, mask, is_causal=causal and mask is None)
        return x


class TorchTransformerEncoder(nn.TransformerEncoder):
    """The ``nn.TransformerEncoder`` this model used before :class:`TransformerEncoder`; same state-dict
    keys and call. Kept as the reference the tests compare against and ``bench_temporal.py --attention
    torch`` times; the model never builds it."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, layers: int):
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
        super().__init__(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, unpadded: torch.Tensor | None = None, causal: bool = False,
                history: int = 0) -> torch.Tensor:  # history: not supported by this reference
        causal_mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device) if causal else None
        return super().forward(x, mask=causal_mask, src_key_padding_mask=None if unpadded is None else ~unpadded)


class TemporalModel(nn.Module):
    """Per-frame predictions for every task in ``cfg.tasks`` from a segment of frame features."""

    def __init__(self, cfg: TemporalConfig):
        super().__init__()
        self.cfg = cfg
        self.specs = [get_task(t) for t in cfg.tasks]
        if not self.specs:
            raise ValueError("TemporalConfig.tasks is empty")
        self.missing = nn.Parameter(torch.zeros(cfg.input_dim)) if cfg.missing_embedding else None
        d = cfg.input_dim * (2 if cfg.person_norm else 1)
        if cfg.arch == "linear":
            self.trunk_dim = d
            self.heads = nn.ModuleDict({s.name: nn.Linear(d, s.num_outputs) for s in self.specs})
            use_fast_linear(self)
            return
        if cfg.arch != "temporal":
            raise ValueError(f"unknown temporal arch {cfg.arch!r}; use 'temporal' or 'linear'")
        width = cfg.tcn_channels[-1]
        if cfg.use_tcn:
            self.tcn = TCN(d, cfg.tcn_channels, cfg.tcn_kernel, cfg.tcn_dilations, cfg.dropout, cfg.causal, cfg.weight_norm)
        else:
            self.tcn = nn.Sequential(nn.Linear(d, width), nn.ReLU())
        self.transformer = None
        if cfg.use_transformer:
            self.transformer = TransformerEncoder(width, cfg.transformer_heads, cfg.transformer_ff, cfg.dropout,
                                                  cfg.transformer_layers)
        self.trunk_dim = width
        self.heads = nn.ModuleDict({
            s.name: nn.Sequential(nn.Linear(width, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.head_hidden, s.num_outputs))
            for s in self.specs
        })
        use_fast_linear(self)  # oneDNN fp32 products on CPUs where they beat MKL (models/fast_linear.py)

    @property
    def streaming(self) -> bool:
        """Only looks back over a bounded history (``causal`` with ``history``): it runs on a live stream."""
        return bool(self.cfg.causal and self.cfg.history)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None,
                unpadded: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (B, T, D) features; present: (B, T) True where the frame had a face (else the learned
        missing embedding is used, when enabled); unpadded: (B, T) False on segment padding; reference: (B, D)
        the mean feature of each segment's video (:func:`person_reference`), or (B, T, D) one per frame (a
        streaming model's :func:`causal_reference`), needed with ``person_norm``.

        Returns ``{task: (B, T, num_outputs)}``: VA after tanh (in [-1, 1]), logits for EXPR and AU.
        """
        if self.missing is not None and present is not None:
            x = torch.where(present[..., None], x, self.missing.to(x.dtype))
        if self.cfg.person_norm:
            if reference is None:
                raise ValueError("this model was trained with person_norm: pass each video's person_reference")
            ref = reference if reference.dim() == 3 else reference[:, None, :]  # (B, T or 1, D)
            x = torch.cat([x, x - ref.to(x.dtype)], dim=-1)  # (B, T, 2D)
        if unpadded is not None:
            x = x * unpadded[..., None].to(x.dtype)
        if self.cfg.arch == "temporal":
            x = self.tcn(x, unpadded) if self.cfg.use_tcn else self.tcn(x)  # (B, T, W)
            if self.transformer is not None:
                if not self.streaming:  # a stream has no window start to count positions from
                    x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device)
                x = self.transformer(x, unpadded, self.cfg.causal, self.cfg.history)  # (B, T, W)
        out = {}
        for spec in self.specs:
            y = self.heads[spec.name](x)
            out[spec.name] = torch.tanh(y) if spec.kind == "regression" else y
        return out


def postprocess(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """Model outputs -> what users get: VA values, EXPR class probabilities, AU probabilities."""
    kind = get_task(task).kind
    if kind == "multiclass":
        return outputs.softmax(-1)
    if kind == "multilabel":
        return outputs.sigmoid()
    return outputs


@torch.no_grad()
def predict_sequence(
    model: TemporalModel, features: np.ndarray | torch.Tensor, present: np.ndarray | None,
    window: int = 300, stride: int = 200, batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Run ``model`` over a whole video in overlapping windows and merge them per frame.

    features: (N, D) (float16 or float32; read window by window, so a memory-mapped array stays on
    disk); present: (N,) bool or None. Returns ``{task: (N, C) float32}`` postprocessed (VA values,
    EXPR and AU probabilities). Windows shorter than ``window`` (short videos) are padded and masked. A
    streaming model runs causally over the whole sequence instead (``causal_stream.predict_causal``).
    """
    from affectmae.segments import OverlapMerger, segment_starts

    if model.streaming:  # frame t's output depends on frames <= t only; no windows to merge
        from affectmae.models.causal_stream import predict_causal

        return predict_causal(model, features, present)
    was_training = model.training
    model.eval()
    n = int(features.shape[0])
    starts = segment_starts(n, window, stride)
    merged = {s.name: OverlapMerger(n, s.num_outputs) for s in model.specs}
    device = next(model.parameters()).device
    reference = torch.from_numpy(person_reference(features, present))[None] if model.cfg.person_norm else None
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        lengths = [min(window, n - s) for s in chunk]
        x = torch.zeros(len(chunk), window, features.shape[1], dtype=torch.float32)
        pres = torch.ones(len(chunk), window, dtype=torch.bool)
        unpadded = torch.zeros(len(chunk), window, dtype=torch.bool)
        for j, (s, ln) in enumerate(zip(chunk, lengths, strict=True)):
            x[j, :ln] = torch.as_tensor(np.asarray(features[s : s + ln], dtype=np.float32))
            unpadded[j, :ln] = True
            if present is not None:
                pres[j, :ln] = torch.as_tensor(np.asarray(present[s : s + ln], dtype=bool))
        ref = None if reference is None else reference.expand(len(chunk), -1).to(device)
        out = model(x.to(device), pres.to(device), unpadded.to(device), ref)
        for name, y in out.items():
            y = postprocess(name, y).float().cpu().numpy()
            for j, (s, ln) in enumerate(zip(chunk, lengths, strict=True)):
                merged[name].add(s, y[j, :ln])
    model.train(was_training)
    return {name: m.result().astype(np.float32) for name, m in merged.items()}


TEMPORAL_KIND = "temporal_model"


def save_temporal(path, model: TemporalModel, metadata: dict | None = None) -> None:
    """Weights + architecture (and e.g. window, stride, AU thresholds, validation scores) in one safetensors file."""
    from dataclasses import asdict

    from affectmae.checkpoint import save_weights

    save_weights(path, model.state_dict(), {**(metadata or {}), "kind": TEMPORAL_KIND, "model": asdict(model.cfg)})


def load_temporal(path) -> tuple[TemporalModel, dict]:
    """Rebuild a model written by :func:`save_temporal`; returns ``(model in eval mode, metadata)``."""
    from affectmae.checkpoint import load_state_strict, load_weights
    from affectmae.errors import CheckpointError

    state, meta = load_weights(path)
    if meta.get("kind") != TEMPORAL_KIND:
        raise CheckpointError(f"{path}: not a temporal-model checkpoint (kind={meta.get('kind')!r})")
    known = set(TemporalConfig.__dataclass_fields__)
    cfg = TemporalConfig(**{k: v for k, v in meta["model"].items() if k in known})
    model = TemporalModel(cfg)
    load_state_strict(model, state, path)
    return model.eval(), meta
