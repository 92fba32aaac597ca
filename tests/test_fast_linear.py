"""FastLinear (oneDNN fp32 products) against float64 references, its backend choice, and what it must not break."""

import logging
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from affectmae.errors import AffectMAEError
from affectmae.models import fast_linear as fl
from affectmae.models.fast_linear import (
    FastLinear,
    cpu_gemm_backend,
    fast_linear,
    set_cpu_gemm_backend,
    use_fast_linear,
)
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.vit import build_encoder
from affectmae.training import memory

needs_onednn = pytest.mark.skipif(not fl.onednn_available(), reason="this PyTorch build has no oneDNN linear")


@pytest.fixture
def backend():
    """Set the backend for one test and put the process's own choice back afterwards."""
    saved = fl._backend
    yield set_cpu_gemm_backend
    fl._backend = saved


def _product_node(y: torch.Tensor) -> str:
    """Name of the autograd node that computed ``y``, looking through the reshape to the input's rank."""
    node = y.grad_fn
    while type(node).__name__ in ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"):
        node = node.next_functions[0][0]
    return type(node).__name__


def _grads_float64(x, w, b, grad):
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.linear(x64, w64, b64)
    y64.backward(grad.double())
    return y64.detach(), x64.grad, w64.grad, b64.grad


@needs_onednn
@pytest.mark.parametrize("m,k,n", [(8, 16, 4), (64, 4, 32)])  # both ways of forming the weight gradient
def test_onednn_forward_and_backward_match_float64(backend, m, k, n):
    backend("onednn")
    gen = torch.Generator().manual_seed(m)
    # a non-contiguous 3-D input, as the attention output is before its projection
    x = torch.randn(2, k, m // 2, generator=gen).transpose(1, 2).requires_grad_()
    w = torch.randn(n, k, generator=gen, requires_grad=True)
    b = torch.randn(n, generator=gen, requires_grad=True)
    grad = torch.randn(2, m // 2, n, generator=gen)
    y = fast_linear(x, w, b)
    assert _product_node(y) == "_OneDNNLinearBackward"
    y.backward(grad)
    ref_y, ref_gx, ref_gw, ref_gb = _grads_float64(x, w, b, grad)
    assert y.shape == (2, m // 2, n)
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), ref_gw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), ref_gb, rtol=1e-5, atol=1e-5)
    assert w.grad.is_contiguous()


@needs_onednn
def test_other_dtypes_and_the_aten_backend_take_f_linear(backend):
    backend("onednn")
    x64 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert _product_node(fast_linear(x64, w64)) == "MmBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its own (bf16) linear
        assert fast_linear(torch.randn(3, 5), torch.randn(2, 5)).dtype == torch.bfloat16
    empty = fast_linear(torch.randn(2, 0, 5, requires_grad=True), torch.randn(2, 5))  # oneDNN refuses M = 0
    assert empty.shape == (2, 0, 2)
    backend("aten")
    x, w = torch.randn(3, 5, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    assert _product_node(fast_linear(x, w)) == "MmBackward0"


@needs_onednn
def test_flop_counter_counts_onednn_products_like_addmm(backend):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder("tiny", 32, depth=2), 32, 1, 2)
    imgs = torch.randn(4, 3, 32, 32)
    totals = {}
    for name in ("aten", "onednn"):
        backend(name)
        with FlopCounterMode(display=False) as counter:
            mae(imgs, 0.75, torch.linspace(0, 1, 4).repeat(4, 1))[0].backward()
        totals[name] = counter.get_total_flops()
    assert totals["aten"] == totals["onednn"]
    layer = FastLinear(16, 8)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(5, 16, requires_grad=True)).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 5 * 16 * 8  # forward, grad input, grad weight


def test_encoder_and_decoder_use_fast_linear_with_nn_linear_keys():
    mae = MaskedAutoencoder(build_encoder("tiny", 32, depth=2), 32, 1, 2)
    linears = [m for m in mae.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 1 * 4 + 2  # qkv, proj, fc1, fc2 per block; decoder embed and pred
    assert all(type(m) is FastLinear for m in linears)
    assert "blocks.0.attn.qkv.weight" in mae.encoder.state_dict()
    use_fast_linear(mae, enabled=False)
    assert all(type(m) is nn.Linear for m in mae.modules() if isinstance(m, nn.Linear))
    use_fast_linear(mae)
    assert all(type(m) is FastLinear for m in mae.modules() if isinstance(m, nn.Linear))


def test_backend_from_the_environment(backend, monkeypatch):
    backend(None)
    monkeypatch.setenv(fl.ENV_VAR, "aten")
    assert cpu_gemm_backend() == "aten"
    backend(None)
    monkeypatch.setenv(fl.ENV_VAR, "mkl")
    with pytest.raises(AffectMAEError, match=r"AFFECTMAE_CPU_GEMM='mkl': expected one of auto, onednn, aten"):
        cpu_gemm_backend()
    backend(None)
    monkeypatch.setenv(fl.ENV_VAR, "auto")
    assert cpu_gemm_backend() in ("onednn", "aten")
    with pytest.raises(ValueError, match="expected 'onednn' or 'aten'"):
        set_cpu_gemm_backend("cublas")


def test_int8_quantisation_still_sees_plain_linear_layers():
    from affectmae.features.extract import quantize_encoder

    torch.manual_seed(0)
    encoder = build_encoder("tiny", 32, depth=2).eval()
    quantized = quantize_encoder(encoder, "int8")
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Linear" in kinds and not any(type(m) in (nn.Linear, FastLinear) for m in quantized.modules())
    assert sum(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in quantized.modules()) == 8
    assert all(type(m) is FastLinear for m in encoder.modules() if isinstance(m, nn.Linear))  # original untouched
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cos = F.cosine_similarity(encoder(imgs), quantized(imgs), dim=1)
    assert cos.min() > 0.99


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_tuned", False)
    monkeypatch.setenv("AFFECTMAE_MALLOC_TUNING", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("AFFECTMAE_MALLOC_TUNING")
    assert memory.keep_freed_memory(torch.device("meta")) is False  # only CPU training churns malloc
    import sys

    if sys.platform.startswith("linux"):
        import platform

        expected = platform.libc_ver()[0] == "glibc"
        assert memory.keep_freed_memory() is expected


CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: some CPU\nflags\t\t: fpu sse avx2 {extra}\n\n" \
          "processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: fpu sse avx2 {extra}\n"


@pytest.mark.parametrize("vendor, extra, wanted", [
    ("AuthenticAMD", "avx512f avx512bw", "onednn"),  # Zen 4/5: MKL runs its AVX2 code there
    ("AuthenticAMD", "", "aten"),  # AVX2 only: the two run alike
    ("GenuineIntel", "avx512f avx512bw", "aten"),  # MKL uses AVX-512 itself
])
def test_auto_backend_is_decided_from_the_cpu_never_from_a_timing(tmp_path, monkeypatch, vendor, extra, wanted):
    """The same machine gives the same answer every time, however loaded: no timing is involved."""
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(vendor=vendor, extra=extra))
    assert fl.cpu_vendor_and_flags(str(info))[0] == vendor
    monkeypatch.setattr(fl, "time_best", lambda *a: pytest.fail("auto must not time anything"))
    expected = wanted if fl.onednn_available() else "aten"
    assert {fl._auto_backend(str(info)) for _ in range(3)} == {expected}


def test_every_process_makes_the_same_choice():
    """Separate interpreters (stages, DDP ranks) resolve ``auto`` alike, and as the CPU rule says."""
    import subprocess
    import sys

    code = "from affectmae.models.fast_linear import cpu_gemm_backend, _auto_backend; print(cpu_gemm_backend(), _auto_backend())"
    env = {k: v for k, v in os.environ.items() if k != fl.ENV_VAR}
    answers = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
               for _ in range(3)}
    assert len(answers) == 1
    chosen, rule = answers.pop().split()
    assert chosen == rule


def test_the_backend_is_recorded_and_a_resumed_run_takes_it_again(backend, tmp_path, monkeypatch, caplog):
    from affectmae.checkpoint import read_metadata
    from affectmae.training.engine import TrainingRun
    from affectmae.training.state import save_training_state

    monkeypatch.delenv(fl.ENV_VAR, raising=False)
    model = nn.Linear(2, 2)
    backend("aten")
    save_training_state(tmp_path / "last_state.safetensors", model, None, {"epoch": 1, "global_step": 3}, {})
    assert read_metadata(tmp_path / "last_state.safetensors")["cpu_gemm"] == "aten"
    if not fl.onednn_available():
        return
    backend("onednn")  # e.g. the resumed process would have chosen otherwise
    run = TrainingRun("train", tmp_path, 2, {}, tensorboard=False)
    with caplog.at_level(logging.INFO):
        run.restore(model, None, ())
    assert cpu_gemm_backend() == "aten" and "as recorded in" in caplog.text
    backend("onednn")
    monkeypatch.setenv(fl.ENV_VAR, "onednn")  # an explicit choice wins, with a warning
    assert fl.adopt_cpu_gemm_backend("aten", "RUN") == "onednn"
    assert "RUN was made with the aten CPU linear backend, but AFFECTMAE_CPU_GEMM=onednn" in caplog.text


def test_features_and_model_dir_record_the_backend(tmp_path):
    from affectmae.features.extract import _continued_cpu_gemm

    meta = tmp_path / "features.json"
    assert _continued_cpu_gemm(meta) == cpu_gemm_backend()  # a new folder: this process's
    meta.write_text('{"cpu_gemm": "aten"}')
    saved = fl._backend
    try:
        assert _continued_cpu_gemm(meta) == "aten" and cpu_gemm_backend() == "aten"  # a continued one: its own
    finally:
        fl._backend = saved


def _gemm_worker(rank: int, world: int, port: int, envs: list, state: str, out: str) -> None:
    """One process of a gloo run: its own AFFECTMAE_CPU_GEMM, then the backend it computes with after joining
    the group (and after resuming from ``state``), whether it decided anything itself, and what it logged."""
    import json

    from affectmae.training.distributed import distributed_session
    from affectmae.training.engine import TrainingRun

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    os.environ.pop(fl.ENV_VAR, None)
    if envs[rank]:
        os.environ[fl.ENV_VAR] = envs[rank]
    torch.set_num_threads(1)
    fl._backend = None
    messages, decided = [], []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("affectmae").addHandler(handler)
    logging.getLogger("affectmae").setLevel(logging.INFO)
    real_auto = fl._auto_backend
    fl._auto_backend = lambda *a: decided.append("auto") or real_auto(*a)
    with distributed_session("cpu") as info:
        started = fl.cpu_gemm_backend()
        if state:
            run = TrainingRun("train", state, 1, {}, is_main=info.is_main, tensorboard=False)
            run.restore(nn.Linear(2, 2), None, ())
    with open(os.path.join(out, f"{rank}.json"), "w") as fh:
        json.dump({"started": started, "backend": fl.cpu_gemm_backend(), "decided": decided, "log": messages}, fh)


@needs_onednn
@pytest.mark.parametrize("case", ["start", "resume"])
def test_distributed_processes_compute_with_the_choice_of_process_0(backend, tmp_path, monkeypatch, case):
    """Two gloo processes whose environments ask for different backends: process 0 decides (from its environment,
    or from the state the run resumes from) and process 1 takes its choice, deciding and logging nothing itself."""
    import json
    import socket

    from affectmae.training.state import save_training_state

    state = ""
    if case == "resume":
        backend("aten")
        save_training_state(tmp_path / "last_state.safetensors", nn.Linear(2, 2), None, {"epoch": 1}, {})
        state = str(tmp_path)
    envs = ["aten", "onednn"] if case == "start" else ["", "onednn"]  # resume: process 0 takes the recorded aten
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_gemm_worker, args=(2, port, envs, state, str(tmp_path)), nprocs=2, join=True)
    first, second = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first["backend"] == second["backend"] == "aten" and second["started"] == first["started"]
    assert second["decided"] == [] and not any(m.startswith("CPU fp32 linear backend") for m in second["log"])
    shared = [m for m in first["log"] if m.startswith("CPU fp32 linear backend of all 2 processes")]
    assert shared == [f"CPU fp32 linear backend of all 2 processes: {b}"
                      for b in ([first["started"], "aten"] if state else ["aten"])]  # once at start, once on resume
    assert ("AFFECTMAE_CPU_GEMM=onednn in this process, but process 0 of the run computes fp32 CPU products with aten; "
            "so does this process") in second["log"]
