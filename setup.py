"""Build clustr_fast and its C++ extension ``clustr_fast._C``.

The CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled. CUDA sources
(csrc/cuda/*.cu) are added when torch is a CUDA build and a CUDA toolkit is found
(``CUDA_HOME``, else /usr/local/cuda), or when ``FORCE_CUDA=1``.

Environment:
  CLUSTR_FAST_SKIP_EXT=1   pure-Python install (the reference backend only)
  CLUSTR_FAST_CPU_ONLY=1   build the C++ CPU kernels only (skip csrc/cuda)
  FORCE_CUDA=1             build the CUDA sources even if detection says no
  TORCH_CUDA_ARCH_LIST     CUDA archs, default "8.0;9.0"
  MAX_JOBS                 parallel compile jobs (ninja)
  DEBUG=1                  -O0 -g builds
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _cuda_library_includes():
    """Headers of the CUDA libraries (cuBLAS, cuSPARSE...) that pip-installed torch ships.

    A minimal toolkit (nvcc + runtime only) lacks them, and ATen's CUDA headers need them.
    """
    dirs = []
    try:
        import nvidia  # the nvidia-* wheels torch depends on

        for base in list(getattr(nvidia, "__path__", [])):
            for inc in sorted(glob.glob(os.path.join(base, "*", "include"))):
                if os.path.exists(os.path.join(inc, "cusparse.h")) or os.path.exists(
                    os.path.join(inc, "cublas_v2.h")
                ):
                    dirs.append(inc)
    except ImportError:
        pass
    return dirs


def _extensions():
    if _flag("CLUSTR_FAST_SKIP_EXT"):
        print("clustr_fast build: CLUSTR_FAST_SKIP_EXT=1 -> pure-Python install", flush=True)
        return [], {}
    debug = _flag("DEBUG")
    cuda_home = _find_cuda_home()
    if cuda_home:  # before torch.utils.cpp_extension reads it at import time
        os.environ.setdefault("CUDA_HOME", cuda_home)
    import torch
    from torch.utils import cpp_extension

    torch_cuda = torch.version.cuda is not None
    use_cuda = _flag("FORCE_CUDA") or (torch_cuda and cuda_home is not None)
    if _flag("CLUSTR_FAST_CPU_ONLY"):  # developer switch: skip the CUDA sources
        use_cuda = False
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-std=c++20", "-fopenmp"]
    nvcc = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    define_macros = []
    if use_cuda:
        sources += cuda_sources
        define_macros.append(("CLUSTR_FAST_WITH_CUDA", None))
    print(
        "clustr_fast build configuration:\n"
        f"  torch {torch.__version__} (CUDA build: {torch.version.cuda})\n"
        f"  CUDA toolkit: {cuda_home}  -> CUDA sources: {'yes' if use_cuda else 'no'}"
        f" ({len(cuda_sources) if use_cuda else 0} .cu files)\n"
        f"  TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}"
        f"  MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}  DEBUG={int(debug)}\n"
        f"  CUDA library headers: {'toolkit' if not use_cuda or cuda_home and os.path.exists(os.path.join(cuda_home, 'include', 'cusparse.h')) else _cuda_library_includes()}\n"
        f"  C++ sources: {len(sources) - (len(cuda_sources) if use_cuda else 0)}",
        flush=True,
    )
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        have = any(os.path.exists(os.path.join(cuda_home or "", "include", h)) for h in ("cusparse.h",))
        if not have:
            include_dirs += _cuda_library_includes()
    ext_cls = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    ext = ext_cls(
        name="clustr_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if use_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"] + (["-g"] if debug else []),
        py_limited_api=True,
    )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["clustr_fast", "clustr_fast.*"]) + ["clustr_fast.kernels"],
    package_dir={"clustr_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
