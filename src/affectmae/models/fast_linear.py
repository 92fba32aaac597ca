"""fp32 linear layers through oneDNN on CPUs where it beats PyTorch's default BLAS.

PyTorch computes fp32 ``nn.Linear`` on x86 CPUs with MKL's sgemm. On AMD CPUs with AVX-512 (Zen 4/5)
MKL runs its AVX2 code path, while oneDNN, which PyTorch also ships, uses AVX-512, so oneDNN's fp32 products
can be much faster there (figures in docs/benchmarks.md, "CPU GEMM: oneDNN or MKL").

:class:`FastLinear` is an ``nn.Linear`` (same parameters, same state-dict keys) whose forward and backward
go through ``torch.ops.mkldnn._linear_pointwise`` (the oneDNN matmul that TorchInductor uses) when the
backend is ``onednn``; the arithmetic is fp32 in both backends, but the two sum in different orders, so
features and weights differ in their last digits between them. The backend is chosen once per process:

- ``AFFECTMAE_CPU_GEMM=onednn`` or ``aten`` forces one;
- ``auto`` (the default) decides from the CPU, never from a timing, so every process on a machine (every
  stage) makes the same choice: oneDNN on AMD CPUs with AVX-512 (where MKL runs its AVX2 code), when this
  PyTorch has the op and it agrees with aten on a fixed product; aten everywhere else (AVX2 CPUs, where the
  two run alike; Intel CPUs, where MKL uses AVX-512).

In a distributed run the processes do not decide each for itself (their machines or environments may
differ): process 0 decides, as above or from the run's recorded state, and the others take its choice
(:func:`take_cpu_gemm_backend`, called by :func:`affectmae.training.distributed.agree_cpu_gemm_backend`).

The backend is recorded with what it made (training state, ``features.json``, MODEL_DIR) and
:func:`adopt_cpu_gemm_backend` takes the recorded one when a run resumes or a stage continues such an
artifact, so a run never mixes the two.

Anything that is not a non-empty fp32 CPU tensor (CUDA, autocast, float64, an empty batch, int8-quantised
copies) takes ``F.linear`` unchanged.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectmae.errors import AffectMAEError

log = logging.getLogger(__name__)

ENV_VAR = "AFFECTMAE_CPU_GEMM"
BACKENDS = ("auto", "onednn", "aten")
CPUINFO = "/proc/cpuinfo"

_backend: str | None = None  # resolved backend of this process ("onednn" or "aten")


def _onednn_op():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear op that :class:`FastLinear` can use."""
    return _onednn_op() is not None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias. ``weight`` may be a transposed view (read in place); a
    non-contiguous ``x`` is copied first by the op."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def time_best(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (after one untimed warm-up call), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_vendor_and_flags(path: str = CPUINFO) -> tuple[str, set[str]]:
    """The first CPU's ``vendor_id`` and ``flags`` from ``/proc/cpuinfo`` (("", set()) where there is none)."""
    vendor, flags = "", set()
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def _auto_backend(path: str = CPUINFO) -> str:
    """``onednn`` on an AMD CPU with AVX-512 when the op exists and agrees with aten on a fixed ViT-B product,
    else ``aten``; the same answer in every process on the machine."""
    vendor, flags = cpu_vendor_and_flags(path)
    if vendor != "AuthenticAMD" or "avx512f" not in flags or _onednn_op() is None:
        return "aten"
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(448, 768, generator=gen), torch.randn(3072, 768, generator=gen)
    try:
        agrees = torch.allclose(onednn_linear(x, w, None), F.linear(x, w), rtol=1e-4, atol=1e-3)
    except RuntimeError as exc:  # an op that exists but is not built for this CPU
        log.debug("oneDNN linear unavailable: %s", exc)
        return "aten"
    if not agrees:
        log.warning("oneDNN fp32 linear disagrees with aten's; using aten")
        return "aten"
    log.info("CPU fp32 linear backend: onednn (AMD CPU with AVX-512)")
    return "onednn"


def cpu_gemm_backend() -> str:
    """The fp32 CPU linear backend of this process: ``onednn`` or ``aten`` (see the module docstring)."""
    global _backend
    if _backend is None:
        wanted = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if wanted not in BACKENDS:
            raise AffectMAEError(f"{ENV_VAR}={wanted!r}: expected one of {', '.join(BACKENDS)}")
        if wanted == "onednn" and _onednn_op() is None:
            raise AffectMAEError(f"{ENV_VAR}=onednn, but this PyTorch build has no oneDNN (mkldnn) linear")
        _backend = _auto_backend() if wanted == "auto" else wanted
    return _backend


def adopt_cpu_gemm_backend(recorded: str | None, source: str) -> str:
    """Use the backend ``recorded`` with an artifact (``source``, named in messages) for this process, so a
    resumed run or a continued artifact is computed as it began. A backend forced by ``AFFECTMAE_CPU_GEMM``
    wins, with a warning when it differs; ``None`` (an artifact from before the record) keeps this process's."""
    if recorded not in ("onednn", "aten"):
        return cpu_gemm_backend()
    forced = os.environ.get(ENV_VAR, "auto").strip().lower()
    if forced in ("onednn", "aten") and forced != recorded:
        log.warning("%s was made with the %s CPU linear backend, but %s=%s; its numbers will differ in the last "
                    "digits", source, recorded, ENV_VAR, forced)
        return cpu_gemm_backend()
    if recorded == "onednn" and _onednn_op() is None:
        log.warning("%s was made with the onednn CPU linear backend, which this PyTorch lacks; using aten", source)
        return cpu_gemm_backend()
    if cpu_gemm_backend() != recorded:
        log.info("CPU fp32 linear backend: %s, as recorded in %s", recorded, source)
        set_cpu_gemm_backend(recorded)
    return recorded


def take_cpu_gemm_backend(chosen: str, source: str) -> str:
    """Compute with ``chosen``, decided by ``source`` (process 0 of a distributed run), whatever this process
    would have chosen; an ``AFFECTMAE_CPU_GEMM`` of this process that asks for the other backend gives way,
    with a warning."""
    forced = os.environ.get(ENV_VAR, "auto").strip().lower()
    if forced in ("onednn", "aten") and forced != chosen:
        log.warning("%s=%s in this process, but %s computes fp32 CPU products with %s; so does this process",
                    ENV_VAR, forced, source, chosen)
    if chosen == "onednn" and _onednn_op() is None:
        raise AffectMAEError(f"{source} computes fp32 CPU products with oneDNN, which the PyTorch of this process "
                             f"lacks; set {ENV_VAR}=aten for every process")
    set_cpu_gemm_backend(chosen)
    return chosen


def set_cpu_gemm_backend(name: str | None) -> None:
    """Force ``onednn`` or ``aten`` for this process (``None``: decide again from the environment)."""
    global _backend
    if name is not None and name not in ("onednn", "aten"):
        raise ValueError(f"CPU GEMM backend {name!r}: expected 'onednn' or 'aten'")
    if name == "onednn" and _onednn_op() is None:
        raise RuntimeError("this PyTorch build has no oneDNN (mkldnn) linear")
    _backend = name


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with oneDNN products in forward and backward (x is 2-D here)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_out, weight.t(), None)  # (M, N) @ (N, K)
        if ctx.needs_input_grad[1]:
            # The op copies a transposed first operand but reads a transposed second one in place: either
            # copy grad_out^T (M*N values), or x^T and then the (K, N) result (M*K + K*N), whichever is less.
            (m, n), k = grad_out.shape, x.shape[1]
            if m * n <= m * k + k * n:
                grad_w = onednn_linear(grad_out.t().contiguous(), x.t(), None)  # (N, M) @ (M, K)
            else:
                grad_w = onednn_linear(x.t().contiguous(), grad_out.t(), None).t().contiguous()  # ((K, M) @ (M, N))^T
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the oneDNN path for fp32 CPU tensors when this process's backend is ``onednn``."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.numel() == 0
            or _cpu_autocast_enabled() or cpu_gemm_backend() != "onednn"):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])


class FastLinear(nn.Linear):
    """``nn.Linear`` computed by :func:`fast_linear`; parameters and state-dict keys are nn.Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_linear(x, self.weight, self.bias)


def use_fast_linear(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn every plain ``nn.Linear`` inside ``module`` into a :class:`FastLinear` (or back), in place.

    Resolves this process's backend now (one small product checks oneDNN on AMD CPUs with AVX-512), so that
    it never runs inside a training step or a ``FlopCounterMode`` block.
    """
    if enabled:
        cpu_gemm_backend()
    for sub in module.modules():
        if enabled and type(sub) is nn.Linear:
            sub.__class__ = FastLinear
        elif not enabled and type(sub) is FastLinear:
            sub.__class__ = nn.Linear
    return module


def _register_flop_formula() -> None:
    """Let ``torch.utils.flop_counter`` count the oneDNN product as it counts ``addmm``."""
    op = _onednn_op()
    if op is None:
        return
    from torch.utils.flop_counter import register_flop_formula

    def linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for dim in x_shape[:-1]:
            rows *= dim
        return 2 * rows * x_shape[-1] * w_shape[0]

    try:
        register_flop_formula(op)(linear_flop)
    except Exception as exc:  # already registered (a newer torch, a second import); counting is only a convenience
        log.debug("no FLOP formula registered for the oneDNN linear: %s", exc)


_register_flop_formula()
