"""Builds the native kernels' shared library (standard library only: setup.py imports it).

One library, ``libcnn_jax_native.so``, from ``csrc/onednn_conv.cc`` (and the headers beside it),
compiled with warnings on against the pinned ``onednn-devel-cpu-gomp`` wheel (headers and
``libdnnl.so`` under the environment's prefix) and the XLA FFI headers that ship with jaxlib.

Where it goes (never into the source tree):
  * ``pip install .`` builds it into the wheel, beside this file (``PACKAGED``);
  * ``pip install -e .`` and ``python -m cnn_jax.native build`` build it into the user cache,
    ``$XDG_CACHE_HOME/cnn_jax/native/<key>/`` (default ``~/.cache``), ``<key>`` a hash of the
    sources, the compile flags and the environment, so an edited source is never run stale.

Without a C++ compiler or the oneDNN headers the build returns one line saying what is missing,
and the trainer runs the pure XLA path.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.join(HERE, "csrc")
SOURCES = ("onednn_conv.cc", "winograd_f2x3.h", "winograd_f4x3.h", "channel_sums.h")
LIBRARY_NAME = "libcnn_jax_native.so"
PACKAGED = os.path.join(HERE, LIBRARY_NAME)
# -Wall -Wextra on our sources (the XLA and oneDNN headers as -isystem), -Werror off: a newer
# compiler's new warning must not cost a user the fast path. -Wno-unused-parameter: the FFI
# handler signatures are fixed by XLA.
FLAGS = ("-O2", "-std=c++17", "-fopenmp", "-shared", "-fPIC", "-Wall", "-Wextra",
         "-Wno-unused-parameter")


def _jax_ffi_include() -> str | None:
  """jaxlib's ``include`` directory (``xla/ffi/api/ffi.h``), found without importing jax."""
  roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]] + sys.path
  for root in roots:
    candidate = os.path.join(root, "jaxlib", "include")
    if os.path.exists(os.path.join(candidate, "xla", "ffi", "api", "ffi.h")):
      return candidate
  return None


def _cache_root() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnn_jax", "native")


def cache_key() -> str:
  """A hash of the sources, flags and environment (prefix, Python) the library depends on."""
  digest = hashlib.sha256()
  for name in SOURCES:
    with open(os.path.join(SOURCE_DIR, name), "rb") as f:
      digest.update(name.encode() + b"\0" + f.read())
  digest.update(" ".join(FLAGS).encode() + sys.prefix.encode() + sys.version.encode())
  return digest.hexdigest()[:16]


def cached_library() -> str:
  """Where ``build()`` puts the library by default (the user cache, keyed by ``cache_key``)."""
  return os.path.join(_cache_root(), cache_key(), LIBRARY_NAME)


def library_path() -> str | None:
  """The library to load: the cached build of these exact sources, else the one a
  non-editable install packaged beside this file, else ``None``."""
  for path in (cached_library(), PACKAGED):
    if os.path.exists(path):
      return path
  return None


def _compiler() -> str | None:
  name = os.environ.get("CXX")
  if name:  # an explicit choice is honoured or reported, never silently replaced
    return shutil.which(name)
  return shutil.which("g++") or shutil.which("c++")


def build(output: str | None = None) -> tuple[bool, str]:
  """Compiles the library into ``output`` (default ``cached_library()``), atomically.

  Returns:
    ``(built, message)``: one line saying what was built, or what is missing and how to get it.
  """
  output = output or cached_library()
  compiler = _compiler()
  include = os.path.join(sys.prefix, "include")
  libdir = os.path.join(sys.prefix, "lib")
  prefix = "native kernels not built"
  if compiler is None:
    wanted = os.environ.get("CXX") or "g++"
    return False, (f"{prefix}: no C++ compiler ({wanted}) found; XLA's convolutions run "
                   "instead (install g++, then `python -m cnn_jax.native build`)")
  if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
    return False, (f"{prefix}: no oneDNN headers under {include}; XLA's convolutions run "
                   "instead (`pip install -r requirements.txt` installs onednn-devel-cpu-gomp)")
  ffi_include = _jax_ffi_include()
  if ffi_include is None:
    return False, f"{prefix}: jaxlib's FFI headers not found; install jaxlib first"
  if not glob.glob(os.path.join(libdir, "libdnnl.so*")):
    return False, f"{prefix}: no libdnnl.so under {libdir} (install onednn-cpu-gomp)"
  os.makedirs(os.path.dirname(output), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(output))
  os.close(fd)
  command = [compiler, *FLAGS, os.path.join(SOURCE_DIR, "onednn_conv.cc"), "-o", tmp,
             "-isystem", ffi_include, "-isystem", include, f"-L{libdir}", "-ldnnl",
             f"-Wl,-rpath,{libdir}"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    lines = result.stderr.strip().splitlines() or ["(no output)"]
    first_error = next((line for line in lines if "error" in line), lines[-1])
    return False, f"{prefix}: {compiler} failed: {first_error}"
  if result.stderr.strip():  # warnings: shown, not fatal
    print(result.stderr.strip(), file=sys.stderr)
  os.chmod(tmp, 0o755)
  os.replace(tmp, output)
  return True, f"built {output}"
