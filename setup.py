"""Build rnnofrnns: the Python package, the Triton kernels (as rnnofrnns.kernels)
and the C++ CPU kernels (as rnnofrnns._C).

Build against the torch that is already installed:
    pip install --no-build-isolation -e .
Set RNNOFRNNS_NO_EXT=1 to skip the C++ extension (the "reference" and "triton"
backends still work). RNNOFRNNS_EXTRA_CXXFLAGS adds compiler flags (bench/micro uses it for
a build with profiling counters).
"""
import glob
import os
import platform

from setuptools import find_packages, setup


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _extensions():
    if os.environ.get("RNNOFRNNS_NO_EXT") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]
    flags = _cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma", "f16c"} <= flags:
        # at::vec's AVX2 specialisations are only used when the capability is defined;
        # otherwise it falls back to slow generic loops.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    cxx += os.environ.get("RNNOFRNNS_EXTRA_CXXFLAGS", "").split()
    ext = CppExtension(
        name="rnnofrnns._C",
        sources=sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")),
        include_dirs=[os.path.abspath("csrc/cpu")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["rnnofrnns", "rnnofrnns.*"]) + ["rnnofrnns.kernels"],
    package_dir={"rnnofrnns": "rnnofrnns", "rnnofrnns.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
