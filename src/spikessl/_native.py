"""Fused C kernels for the LIF time loop on the CPU, compiled on first use.

Why C and not ``torch.compile``: the loop is memory-bound, and a kernel that keeps a block
of neurons in cache across all T steps reads the input once and writes membrane and spikes
once. It compiles in about a second with the system's C compiler (no PyTorch headers), is
cached under ``$SPIKESSL_CACHE`` (default ``~/.cache/spikessl``) and is loaded with ctypes.
Without a compiler, or with ``SPIKESSL_NATIVE=0``, spikessl uses the eager PyTorch loop:
same results, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch

_FLAGS_COMMON = ["-O3", "-fPIC", "-fopenmp", "-march=native"]
_FLAGS = {"LIF_FORWARD": ["-ffp-contract=off"], "LIF_BACKWARD": ["-ffast-math"]}
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(source: str, target: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise OSError("no C compiler (gcc/cc) found")
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target: os.replace cannot move a file across filesystems (a tmpfs
    # /tmp, an NFS home), and a failed build would fall back to the slow loop everywhere
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "lif.c"
        src.write_text(source)
        objects = []
        for macro, flags in _FLAGS.items():
            obj = Path(tmp) / f"{macro}.o"
            cmd = [cc, *_FLAGS_COMMON, *flags, f"-D{macro}", "-c", str(src), "-o", str(obj)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            objects.append(str(obj))
        out = Path(tmp) / target.name
        cmd = [cc, "-shared", "-fopenmp", *objects, "-o", str(out), "-lm"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: concurrent processes never load half a file


def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they are disabled or cannot be built."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("SPIKESSL_NATIVE", "1") == "0":
        return None
    source = resources.files("spikessl").joinpath("_lif_kernel.c").read_text()
    key = hashlib.sha256(
        "\n".join(
            [source, str(_FLAGS), str(_FLAGS_COMMON), platform.machine(), _cpu_signature()]
        ).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("SPIKESSL_CACHE", Path.home() / ".cache" / "spikessl"))
    target = cache / f"lif_{key}.so"
    try:
        if not target.exists():
            _build(source, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        warnings.warn(
            f"spikessl: fused CPU kernels unavailable ({err} {detail.decode()[:200]}); "
            "using the eager PyTorch loop (same results, slower). Install gcc to enable them.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    i64, f32, i32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    # the C signatures in _lif_kernel.c, argument group by argument group
    signatures = {
        # cur, T, N, constant, beta, thr, mem, spk, nthreads
        "lif_forward": [ptr, i64, i64, i32, f32, f32, ptr, ptr, i32],
        # mem, gs, gm, T, N, constant, detach_reset, beta, thr, slope, grad_cur, want_beta,
        # grad_beta, nthreads
        "lif_backward": [ptr] * 3 + [i64] * 2 + [i32] * 2 + [f32] * 3 + [ptr, i32, ptr, i32],
        # cur, T, B, C, H, W, k, constant, nhwc, out_nhwc, beta, thr, mem, out, count, nthreads
        "lif_pool_forward": [ptr] + [i64] * 6 + [i32] * 3 + [f32] * 2 + [ptr] * 3 + [i32],
        # mem, cur, gout, T, B, C, H, W, k, constant, nhwc, out_nhwc, detach_reset, beta, thr,
        # slope, grad_cur, want_beta, grad_beta, nthreads
        "lif_pool_backward": [ptr] * 3 + [i64] * 6 + [i32] * 4 + [f32] * 3 + [ptr, i32, ptr, i32],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    _lib = lib
    return lib


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees the same few hundred-MB tensors every step; glibc
    serves each from fresh ``mmap`` pages, and faulting those in costs about a third of a
    CPU step (measured: 1.27 s -> 0.87 s per step, paper-mnist T=30 batch 256). This sets
    ``M_MMAP_MAX=0`` and a high ``M_TRIM_THRESHOLD`` (``mallopt``) for the whole process;
    ``SPIKESSL_MALLOC_TUNING=0`` opts out. Returns whether the settings took effect.
    """
    if os.environ.get("SPIKESSL_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def memory_format(t: torch.Tensor) -> torch.memory_format | None:
    """The layout the kernels can read ``t`` in: contiguous NCHW-like or channels-last."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


LOW_PRECISION = (torch.bfloat16, torch.float16)
FLOATS = (torch.float32, *LOW_PRECISION)


def usable(*tensors: torch.Tensor | None, dtypes: tuple = (torch.float32,)) -> bool:
    """True when the kernels apply: dense CPU tensors of ``dtypes`` and a built library."""
    dense = all(
        t is None or (t.device.type == "cpu" and t.dtype in dtypes and memory_format(t) is not None)
        for t in tensors
    )
    return dense and load() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(current: torch.Tensor, steps: int | None, beta: float, threshold: float):
    """Eq. (6) over time; returns (spikes, membrane), each [T, ...] float32."""
    current = current.contiguous()
    constant = steps is not None
    T = steps if constant else current.shape[0]
    shape = current.shape if constant else current.shape[1:]
    N = current.numel() // (1 if constant else max(T, 1))
    mem = current.new_empty((T, *shape))
    spikes = current.new_empty((T, *shape))
    _lib.lif_forward(
        _ptr(current),
        T,
        N,
        int(constant),
        beta,
        threshold,
        _ptr(mem),
        _ptr(spikes),
        torch.get_num_threads(),
    )
    return spikes, mem


def backward(mem, grad_spikes, grad_mem, constant, detach_reset, beta, threshold, slope, want_beta):
    """(dL/dI, dL/dbeta or None) from the saved membrane and the output gradients."""
    T, N = mem.shape[0], mem[0].numel()
    grad = mem.new_empty(mem.shape[1:] if constant else mem.shape)
    grad_beta = ctypes.c_double(0.0)
    _lib.lif_backward(
        _ptr(mem),
        _ptr(grad_spikes),
        _ptr(grad_mem),
        T,
        N,
        int(constant),
        int(detach_reset),
        beta,
        threshold,
        slope,
        _ptr(grad),
        int(want_beta),
        ctypes.addressof(grad_beta),
        torch.get_num_threads(),
    )
    beta_grad = torch.tensor(grad_beta.value, dtype=mem.dtype) if want_beta else None
    return grad, beta_grad


def pool_forward(
    current: torch.Tensor,
    T: int,
    constant: bool,
    beta: float,
    threshold: float,
    k: int,
    keep_membrane: bool,
    in_place: bool = False,
    out_format: torch.memory_format | None = None,
):
    """LIF + k x k max-pool of its spikes. ``current``: ``[T*B, C, H, W]`` (or constant
    ``[B, C, H, W]``), NCHW or channels-last. Returns (pooled ``[T*B, C, H//k, W//k]`` in
    ``out_format`` (default: the input's memory format), membrane ``[T*B, C, H, W]`` or None,
    spike count). With ``in_place`` (non-constant input, ``keep_membrane``) the membrane is
    written over ``current`` and returned as it: no second full-size tensor.
    """
    fmt = memory_format(current)
    out_format = fmt if out_format is None else out_format
    n, C, H, W = current.shape
    B = n if constant else n // T
    if in_place and (constant or not keep_membrane):
        raise ValueError("in_place needs a non-constant input and keep_membrane")
    if in_place:
        mem = current
    elif keep_membrane:
        mem = torch.empty((T * B, C, H, W), dtype=current.dtype, memory_format=fmt)
    else:
        mem = None
    out = torch.empty((T * B, C, H // k, W // k), dtype=current.dtype, memory_format=out_format)
    count = ctypes.c_double(0.0)
    _lib.lif_pool_forward(
        _ptr(current),
        T,
        B,
        C,
        H,
        W,
        k,
        int(constant),
        int(fmt == torch.channels_last),
        int(memory_format(out) == torch.channels_last),
        beta,
        threshold,
        _ptr(mem),
        _ptr(out),
        ctypes.addressof(count),
        torch.get_num_threads(),
    )
    return out, mem, count.value


def pool_backward(
    saved,
    grad_out,
    T,
    k,
    constant,
    detach_reset,
    beta,
    threshold,
    slope,
    want_beta,
    is_membrane,
    in_place=False,
):
    """Gradients from the saved membrane, or (``is_membrane`` False) from the saved input.

    With ``in_place`` (a saved membrane of a non-constant input) the gradient is written
    over the membrane, step by step as each is consumed, and returned in its storage.
    """
    fmt = memory_format(saved)
    n, C, H, W = saved.shape
    B = n if constant and not is_membrane else n // T
    if memory_format(grad_out) is None:  # the kernel reads NCHW or channels-last
        grad_out = grad_out.contiguous(memory_format=fmt)
    if in_place and (constant or not is_membrane):
        raise ValueError("in_place needs the saved membrane of a non-constant input")
    if in_place:
        grad = saved.detach()
    else:
        grad = torch.empty(
            (B, C, H, W) if constant else (T * B, C, H, W), dtype=saved.dtype, memory_format=fmt
        )
    grad_beta = ctypes.c_double(0.0)
    mem, cur = (saved, None) if is_membrane else (None, saved)
    _lib.lif_pool_backward(
        _ptr(mem),
        _ptr(cur),
        _ptr(grad_out),
        T,
        B,
        C,
        H,
        W,
        k,
        int(constant),
        int(fmt == torch.channels_last),
        int(memory_format(grad_out) == torch.channels_last),
        int(detach_reset),
        beta,
        threshold,
        slope,
        _ptr(grad),
        int(want_beta),
        ctypes.addressof(grad_beta),
        torch.get_num_threads(),
    )
    beta_grad = torch.tensor(grad_beta.value, dtype=saved.dtype) if want_beta else None
    return grad, beta_grad
