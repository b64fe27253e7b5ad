"""Builds kinmerge's optional C kernels (kinship, sketch); everything else is in pyproject.toml.

The extensions are ``optional``: without a working C compiler the install goes on and kinmerge
uses its numpy kernels (same numbers, slower). ``python -c "from kinmerge import _kernels;
print(_kernels.default_backend())"`` says which one an install got.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Explicit-lane reductions, no contraction: results do not depend on the compiler's choices.
# NaN/Inf must propagate (the scan finds damaged tensors by them): no -ffast-math.
UNIX_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-Wno-psabi"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                ext.extra_compile_args = [*ext.extra_compile_args, *UNIX_FLAGS]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("kinmerge._kinship_c", ["src/kinmerge/_kinship.c"], optional=True),
        Extension("kinmerge._sketch_c", ["src/kinmerge/_sketch.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
