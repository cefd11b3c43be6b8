"""Builds the native kernels as part of ``pip install`` (metadata: pyproject.toml).

``pip install .`` compiles ``cnn_jax/native/csrc`` into the wheel (``cnn_jax/native/``);
``pip install -e .`` into the user cache (``cnn_jax.native.build.cached_library``), so nothing
is written into the source tree. Without a compiler or the oneDNN headers the build prints one
line and the install goes on: the package then runs the pure XLA path.
"""

import importlib.util
import os
import sys
import tempfile

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _native_build():
  """``cnn_jax/native/build.py`` on its own (standard library only: jax is not imported)."""
  path = os.path.join(HERE, "cnn_jax", "native", "build.py")
  spec = importlib.util.spec_from_file_location("_cnn_jax_native_build", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class BuildPyWithNative(build_py):
  """``build_py``, then the native library (beside the package, or in the user cache)."""

  def run(self):
    super().run()
    build = _native_build()
    if getattr(self, "editable_mode", False):
      _, message = build.build()
    else:
      _, message = build.build(os.path.join(self.build_lib, "cnn_jax", "native",
                                            build.LIBRARY_NAME))
    print(f"cnn-jax: {message}", file=sys.stderr)


class PlatformDistribution(Distribution):
  """The wheel holds a compiled library: tag it for this platform, not ``py3-none-any``."""

  def has_ext_modules(self):
    return True


# setuptools' build folder and metadata (egg-info) go to a fresh temporary folder, not into
# the source tree (and no earlier build's library can slip into a wheel).
_SCRATCH = tempfile.mkdtemp(prefix="cnn_jax_build_")
setup(cmdclass={"build_py": BuildPyWithNative}, distclass=PlatformDistribution,
      options={"egg_info": {"egg_base": _SCRATCH},
               "build": {"build_base": os.path.join(_SCRATCH, "build")}})
