"""The compiled float32 CPU rollout kernel (native/rollout_kernel.c): build, load, call.

The kernel computes what `rollout.torch_cost_and_gradient` computes, from the same
`GradientOperands`, in one call per optimisation step: a time step's per-particle arithmetic
becomes one C loop instead of ~80 tensor operations, and the passes over the kernel values and
policy activations are fused (docs/ALGORITHM.md §6). Its two large products per step go to the
sgemm inside torch's own BLAS, so it follows `torch.set_num_threads` (optimizer.threads).

It is compiled on first use with the system C compiler ($CC, else cc) and `-march=native`, into
a cache directory ($EBMCPILCO_CACHE_DIR, else $XDG_CACHE_HOME/ebmcpilco_ros, else
~/.cache/ebmcpilco_ros), under a name that hashes the source, the flags, the compiler and the
CPU, so a home directory shared between machines never loads a build for another CPU. Without a
compiler or a BLAS sgemm, optimizer.backend "auto" falls back to the torch implementation.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .config import ROLLOUT_BACKENDS, CostConfig
from .rollout import (_MAX_EXPONENT2, _MIN_STD, _MIN_VARIANCE, TORCH_BACKEND,
                      GradientOperands, GradientSums, ParticleDynamics, RolloutBackend,
                      RolloutNoise)

CFLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp-simd", "-fPIC", "-shared", "-std=gnu11", "-g")
_SOURCE = "rollout_kernel.c"
_FLOAT_P = ctypes.POINTER(ctypes.c_float)


class NativeKernelUnavailable(RuntimeError):
    """The kernel cannot run here; the message says why."""


# rollout_cost_and_gradient's status, in words (the enum in rollout_kernel.c).
STATUS = {0: "ok",
          1: "shape mismatch: the kernel takes states of 4, policy features of 5 and GP inputs "
             "of 6, and sizes of at least 1 (R at most N)"}


class RolloutArgs(ctypes.Structure):
    """Mirrors `rollout_args` in rollout_kernel.c, field by field."""

    _fields_ = ([(n, ctypes.c_int) for n in ("M", "H", "B", "G", "N", "R", "state_size",
                                             "feature_size", "input_size", "forward_only")]
                + [(n, ctypes.c_float) for n in ("umax", "inv_lt", "inv_lp", "max_exponent2",
                                                 "min_variance", "min_std")]
                + [(n, _FLOAT_P) for n in ("x0", "il", "AsT_aug", "w_eff", "wAsT")]
                + [("keep", ctypes.POINTER(ctypes.c_uint8))]
                + [(n, _FLOAT_P) for n in (
                    "inv_ls", "centre", "VA",
                    "V", "ZT", "alpha", "sf2", "F", "Gm", "eps", "workspace",
                    "cost_per_step", "final_x", "V_sum", "g_log_f", "states")]
                + [("sgemm", ctypes.c_void_p)])


def cache_dir() -> Path:
    explicit = os.environ.get("EBMCPILCO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ebmcpilco_ros"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> list[str]:
    return (os.environ.get("CC") or "cc").split()


def build(directory: Path | None = None) -> Path:
    """Compile the kernel unless this source, compiler and CPU already have a build."""
    source = importlib.resources.files(__package__).joinpath("native", _SOURCE).read_bytes()
    cc = _compiler()
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeKernelUnavailable(f"no C compiler ({' '.join(cc)}): {exc}") from exc
    key = hashlib.sha256(b"\0".join(
        [source, " ".join(CFLAGS).encode(), version.encode(), _cpu_signature().encode()]))
    directory = directory or cache_dir()
    target = directory / f"rollout_kernel-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    except OSError as exc:
        raise NativeKernelUnavailable(f"cache directory {directory} is not writable: {exc}; "
                                      "set EBMCPILCO_CACHE_DIR") from exc
    os.close(fd)
    with tempfile.TemporaryDirectory() as src_dir:
        src = Path(src_dir) / _SOURCE
        src.write_bytes(source)
        try:
            result = subprocess.run([*cc, *CFLAGS, "-o", tmp, str(src), "-lm"],
                                    capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            os.unlink(tmp)
            raise NativeKernelUnavailable(f"compiling {_SOURCE} failed: {exc}") from exc
    if result.returncode != 0:
        os.unlink(tmp)
        raise NativeKernelUnavailable(f"compiling {_SOURCE} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, target)  # atomic: concurrent builders each publish a complete file
    return target


def _sgemm_address() -> int:
    """sgemm_ from the BLAS torch links (MKL on x86 wheels: it follows torch's thread count),
    else scipy's; 0 if neither has one."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (lib_dir / name).exists():
            try:
                return ctypes.cast(ctypes.CDLL(str(lib_dir / name)).sgemm_,
                                   ctypes.c_void_p).value or 0
            except (OSError, AttributeError):
                break
    return scipy_sgemm_address()


def scipy_sgemm_address() -> int:
    """sgemm from scipy.linalg.cython_blas (LP64, the Fortran calling convention)."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        return 0
    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, get_name(capsule)) or 0


def _ptr(t: Tensor | None) -> ctypes._Pointer | None:
    return None if t is None else ctypes.cast(t.data_ptr(), _FLOAT_P)


class NativeRolloutKernel:
    """The loaded kernel; `cost_and_gradient` mirrors `rollout.torch_cost_and_gradient`."""

    def __init__(self, library: Path, sgemm: int) -> None:
        self.library = library
        self._lib = ctypes.CDLL(str(library))  # ctypes releases the GIL during calls
        self._lib.rollout_cost_and_gradient.argtypes = [ctypes.POINTER(RolloutArgs)]
        self._lib.rollout_cost_and_gradient.restype = ctypes.c_int
        self._lib.rollout_workspace_floats.argtypes = [ctypes.POINTER(RolloutArgs)]
        self._lib.rollout_workspace_floats.restype = ctypes.c_size_t
        self._lib.rollout_args_size.argtypes = []
        self._lib.rollout_args_size.restype = ctypes.c_size_t
        size = self._lib.rollout_args_size()
        if size != ctypes.sizeof(RolloutArgs):  # a field added on one side only
            raise NativeKernelUnavailable(
                f"{library.name}: its rollout_args has {size} bytes, RolloutArgs here "
                f"{ctypes.sizeof(RolloutArgs)}: the two definitions disagree")
        self._sgemm = sgemm
        self._local = threading.local()  # one reusable workspace per calling thread

    def _workspace(self, floats: int) -> Tensor:
        ws = getattr(self._local, "workspace", None)
        if ws is None or ws.numel() < floats:
            ws = torch.empty(floats, dtype=torch.float32)
            self._local.workspace = ws
        return ws

    def cost_and_gradient(self, ops: GradientOperands, dyn: ParticleDynamics, x0: Tensor,
                          noise: RolloutNoise, horizon: int,
                          cost: CostConfig) -> GradientSums:
        """Cost per step (H,), final states (M, 4), V_sum (6, B), g_log_f (5,)."""
        outputs = self._run(ops, dyn, x0, noise, horizon, cost, forward_only=False)
        return (outputs["cost_per_step"], outputs["final_x"], outputs["V_sum"],
                outputs["g_log_f"])

    def states(self, ops: GradientOperands, dyn: ParticleDynamics, x0: Tensor,
               noise: RolloutNoise, horizon: int) -> Tensor:
        """Every particle's trajectory (H+1, M, 4), x0 first: the forward pass alone (what
        rollout.rollout gives, without autograd; the stop on predicted success reads it). The
        cost it also computes is dropped, so any cost's lengths do."""
        return self._run(ops, dyn, x0, noise, horizon, CostConfig(), forward_only=True)["states"]

    def _run(self, ops: GradientOperands, dyn: ParticleDynamics, x0: Tensor,
             noise: RolloutNoise, horizon: int, cost: CostConfig,
             forward_only: bool) -> dict[str, Tensor]:
        M, B = x0.shape[0], ops.AsT_aug.shape[1]
        G, N, R1 = ops.VA.shape
        if noise.eps.shape[:2] != (horizon, M) or noise.eps.shape[2] != G:
            raise ValueError(f"noise.eps has shape {tuple(noise.eps.shape)}, expected "
                             f"({horizon}, {M}, {G})")

        def c(t: Tensor) -> Tensor:
            if t.dtype != torch.float32 or t.device.type != "cpu":
                raise NativeKernelUnavailable(
                    f"the native kernel takes float32 CPU tensors, got {t.dtype} on {t.device}")
            return t.detach().contiguous()

        inputs = dict(
            x0=c(x0), il=c(ops.il), AsT_aug=c(ops.AsT_aug), w_eff=c(ops.w_eff),
            wAsT=c(ops.wAsT), inv_ls=c(dyn.inv_ls), centre=c(dyn.centre),
            VA=c(ops.VA), V=c(dyn.V), ZT=c(dyn.Z.mT), alpha=c(dyn.alpha),
            sf2=c(dyn.sf2), F=c(dyn.F), Gm=c(dyn.Gm), eps=c(noise.eps))
        f32 = torch.float32
        outputs = dict(cost_per_step=torch.empty(horizon, dtype=f32),
                       final_x=torch.empty(M, x0.shape[1], dtype=f32),
                       V_sum=torch.empty(1 + ops.il.shape[0], B, dtype=f32),
                       g_log_f=torch.empty(ops.il.shape[0], dtype=f32))
        if forward_only:
            outputs["states"] = torch.empty(horizon + 1, M, x0.shape[1], dtype=f32)
        args = RolloutArgs(
            M=M, H=horizon, B=B, G=G, N=N, R=R1 - 1, state_size=x0.shape[1],
            forward_only=int(forward_only),
            feature_size=ops.il.shape[0], input_size=dyn.Z.shape[-1], umax=ops.u_max,
            inv_lt=1.0 / cost.length_theta, inv_lp=1.0 / cost.length_p,
            max_exponent2=_MAX_EXPONENT2, min_variance=_MIN_VARIANCE, min_std=_MIN_STD,
            sgemm=self._sgemm,
            **{k: _ptr(v) for k, v in inputs.items()},
            **{k: _ptr(v) for k, v in outputs.items()})
        if noise.keep is not None:
            if noise.keep.dtype != torch.uint8 or noise.keep.shape != (horizon, M, B):
                raise ValueError(f"noise.keep must be uint8 ({horizon}, {M}, {B}), got "
                                 f"{noise.keep.dtype} {tuple(noise.keep.shape)}")
            keep = noise.keep.contiguous()
            args.keep = ctypes.cast(keep.data_ptr(), ctypes.POINTER(ctypes.c_uint8))
        args.workspace = _ptr(self._workspace(self._lib.rollout_workspace_floats(args)))
        status = self._lib.rollout_cost_and_gradient(ctypes.byref(args))
        if status != 0:
            raise ValueError(f"native rollout kernel: status {status}, "
                             f"{STATUS.get(status, 'unknown')} (M {M}, H {horizon}, B {B}, "
                             f"G {G}, N {N}, R {R1 - 1}, state {x0.shape[1]}, features "
                             f"{ops.il.shape[0]}, GP inputs {dyn.Z.shape[-1]})")
        return outputs


@functools.lru_cache(maxsize=1)
def _load() -> NativeRolloutKernel | str:
    try:
        sgemm = _sgemm_address()
        if not sgemm:
            return "no BLAS sgemm found in torch or scipy"
        return NativeRolloutKernel(build(), sgemm)
    except (NativeKernelUnavailable, OSError) as exc:
        return str(exc)


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (building it if needed), or None when it can."""
    kernel = _load()
    return kernel if isinstance(kernel, str) else None


def native_kernel() -> NativeRolloutKernel:
    """The kernel, built on first use; NativeKernelUnavailable says why it cannot run here."""
    kernel = _load()
    if isinstance(kernel, str):
        raise NativeKernelUnavailable(kernel)
    return kernel


def native_applies(dtype: torch.dtype, device: str | torch.device) -> bool:
    """The kernel covers float32 rollouts on the CPU; everything else runs on torch."""
    return dtype == torch.float32 and torch.device(device).type == "cpu"


def native_backend() -> RolloutBackend:
    """The compiled kernel as a rollout backend; NativeKernelUnavailable says why not here."""
    kernel = native_kernel()
    return RolloutBackend("native", kernel.cost_and_gradient, kernel.states)


def resolve_backend(backend: str, dtype: torch.dtype, device: str | torch.device
                    ) -> RolloutBackend:
    """The rollout backend optimizer.backend names, building the kernel here if it is needed.

    "auto" takes the kernel for float32 on the CPU when it builds, and says once why not when
    it does not; "native" raises instead.
    """
    if backend == "torch":
        return TORCH_BACKEND
    fits = native_applies(dtype, device)
    if backend == "native":
        if not fits:
            raise NativeKernelUnavailable(
                "optimizer.backend 'native' needs optimizer.dtype float32 and device cpu")
        return native_backend()
    if backend != "auto":
        raise ValueError(f"optimizer.backend must be one of {ROLLOUT_BACKENDS}, got {backend!r}")
    if not fits:
        return TORCH_BACKEND
    kernel = _load()
    if isinstance(kernel, str):
        _warn_fallback(kernel)
        return TORCH_BACKEND
    return RolloutBackend("native", kernel.cost_and_gradient, kernel.states)


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"optimizer.backend auto: using the torch rollout, the native kernel is "
                  f"unavailable: {reason}", RuntimeWarning, stacklevel=3)
