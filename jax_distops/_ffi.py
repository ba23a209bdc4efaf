"""Loads the compiled extensions and registers their FFI handlers with XLA.

``_cpu`` is always built and registered at import. ``_cuda`` exists only in builds with
``JAX_DISTOPS_CUDA=ON`` (or AUTO with nvcc present); it is imported lazily, on the first lowering for a
CUDA device, so that importing jax_distops never loads the CUDA runtime on a CPU-only machine.
"""

from __future__ import annotations

import functools

import jax

from . import _cpu

TARGET_PREFIX = "jax_distops_"

for _name, _capsule in _cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")

_CPU_TARGETS = frozenset(_cpu.registrations())


@functools.cache
def _cuda_targets() -> frozenset[str] | None:
    """Registers the CUDA handlers once; None when this build has no CUDA extension."""
    try:
        from . import _cuda  # noqa: PLC0415 - lazy: loads libcudart
    except ImportError:
        return None
    targets = _cuda.registrations()
    for name, capsule in targets.items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    return frozenset(targets)


def has_cuda_support() -> bool:
    """True when this build of jax_distops has its CUDA extension."""
    return _cuda_targets() is not None


def target_name(op: str) -> str:
    return TARGET_PREFIX + op


def require_target(op: str, platform: str) -> str:
    """The FFI target of ``op`` on ``platform``; raises a clear error when this build lacks it."""
    name = target_name(op)
    if platform == "cpu":
        if name not in _CPU_TARGETS:
            raise NotImplementedError(f"jax_distops: {op} has no CPU kernel in this build")
        return name
    if platform == "cuda":
        targets = _cuda_targets()
        if targets is None:
            raise NotImplementedError(
                f"jax_distops: {op} was lowered for a CUDA device, but this jax_distops build has no "
                "CUDA extension. Reinstall with CUDA enabled: JAX_DISTOPS_CUDA=ON pip install . "
                "(CMake option -DJAX_DISTOPS_CUDA=ON; needs nvcc), or run on CPU "
                "(JAX_PLATFORMS=cpu)."
            )
        if name not in targets:
            raise NotImplementedError(f"jax_distops: {op} has no CUDA kernel yet; run it on CPU")
        return name
    raise NotImplementedError(f"jax_distops: {op} is not available on platform {platform!r}")
