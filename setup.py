"""Build rnnofrnns: the Python package, the Triton kernels (as rnnofrnns.kernels)
and the C++ CPU kernels, once per CPU capability (as rnnofrnns._C_default, _C_avx2 and
_C_avx512; rnnofrnns/ops/_capability.py loads the best one the CPU supports).

Build against the torch that is already installed:
    pip install --no-build-isolation -e .
Set RNNOFRNNS_NO_EXT=1 to skip the C++ extension (the "reference" and "triton"
backends still work). RNNOFRNNS_EXTRA_CXXFLAGS adds compiler flags (bench/micro uses it for
a build with profiling counters). RNNOFRNNS_BUILD_CAPABILITIES=avx2,default (say) builds
only those.
"""
import glob
import os
import platform

from setuptools import find_packages, setup

# The flags of each build, as ATen compiles its own per-capability kernels: at::vec picks its
# 8-lane (AVX2) or 16-lane (AVX-512) specialisations from CPU_CAPABILITY_*; "default" is the
# portable build with at::vec's generic loops. Every build compiles the same sources.
CAPABILITY_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


def _capabilities() -> list:
    x86 = platform.machine() in ("x86_64", "AMD64")
    wanted = os.environ.get("RNNOFRNNS_BUILD_CAPABILITIES")
    names = [c.strip() for c in wanted.split(",") if c.strip()] if wanted else list(CAPABILITY_FLAGS)
    for c in names:
        if c not in CAPABILITY_FLAGS:
            raise SystemExit(f"RNNOFRNNS_BUILD_CAPABILITIES: expected names from {tuple(CAPABILITY_FLAGS)}, got {c!r}")
        if c != "default" and not x86:
            raise SystemExit(f"RNNOFRNNS_BUILD_CAPABILITIES: {c!r} needs an x86-64 compiler target")
    return names if wanted else (names if x86 else ["default"])


def _extensions():
    if os.environ.get("RNNOFRNNS_NO_EXT") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # -g0: debug info tripled the compile time of the ensemble kernels.
    cxx = ["-O3", "-g0", "-std=c++17", "-fopenmp", "-fno-math-errno"]
    extra = os.environ.get("RNNOFRNNS_EXTRA_CXXFLAGS", "").split()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/cpu/*/*.cpp"))
    exts = [
        CppExtension(
            name=f"rnnofrnns._C_{cap}",
            sources=sources,
            include_dirs=[os.path.abspath("csrc/cpu")],
            extra_compile_args={"cxx": cxx + CAPABILITY_FLAGS[cap] + extra},
            extra_link_args=["-fopenmp"],
        )
        for cap in _capabilities()
    ]

    class BuildPerCapability(BuildExtension.with_options(use_ninja=True)):
        """Each build compiles the same sources with other flags: separate object folders."""

        def build_extension(self, ext):
            base = self.build_temp
            self.build_temp = os.path.join(base, ext.name.rsplit(".", 1)[-1])
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = base

    return exts, {"build_ext": BuildPerCapability}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["rnnofrnns", "rnnofrnns.*"]) + ["rnnofrnns.kernels"],
    package_dir={"rnnofrnns": "rnnofrnns", "rnnofrnns.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
