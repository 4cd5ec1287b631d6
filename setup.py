"""Build the private Cython kernels (``fastgen._ext``).

All compiler directives live here, in one place. No ``-march=native``: wheels must run on any
x86-64 / aarch64 machine of their platform tag.
"""
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}

if sys.platform == "win32":
    COMPILE_ARGS = ["/O2"]
else:
    COMPILE_ARGS = ["-O3", "-fno-math-errno", "-Wno-psabi"]

EXTENSIONS = [
    Extension(f"fastgen._ext.{name}", [f"src/fastgen/_ext/{name}.pyx"], extra_compile_args=COMPILE_ARGS,
              depends=[f"src/fastgen/_ext/{h}" for h in headers])     # a header edit rebuilds its module
    for name, headers in (("mel", ("stft_core.h",)), ("image", ("resize_core.h", "convert_core.h")),
                          ("scan", ("scan_core.h", "fileio_core.h")), ("fileio", ("fileio_core.h",)))
]

setup(ext_modules=cythonize(EXTENSIONS, compiler_directives=DIRECTIVES))
