"""Which formulation of a 3x3 conv's forward and gradients is fastest on XLA CPU.

  python -m bench.conv_backward [--batch=128] [--layers=s1,s2,s3,strided] [--repeats=5]
      [--cpu_convolutions=xla_default] [--json]

For each layer of a CIFAR ResNet (``s1``: 32x32, 16->16; ``s2``: 16x16, 32->32; ``s3``: 8x8,
64->64; ``strided``: 32x32, 16->32, stride 2; all 3x3, padding 1, channels-last) it times,
separately and jit-compiled, every formulation below, in interleaved order (one call of each
formulation per round, ``repeats`` rounds) so that load from other processes is shared, and
prints the median milliseconds and GFLOP/s (``2 N Ho Wo 9 C_in C_out`` per pass). Every
formulation's result is checked against XLA's autodiff before it is timed. Each function is
jitted with the compiler options of ``--cpu_convolutions`` (``eigen``: the trainer's
default, XLA's own Eigen convolutions; ``xla_default``: XLA's choice, YNNPACK above 16
channels; see ``cnn_jax.train.steps.compiler_options``).

Formulations (``x``: ``(N, H, W, C)``, ``w``: ``(3, 3, C, O)``, cotangent ``g``:
``(N, Ho, Wo, O)``):
  forward
    fwd/xla          lax.conv_general_dilated, NHWC/HWIO
    fwd/nchw         the same conv on NCHW/OIHW arrays (layout only; transposes not timed)
    fwd/im2col       9 strided slices concatenated to (N Ho Wo, 9C), one matmul with (9C, O)
  input gradient dL/dx
    dx/autodiff      jax.vjp of fwd/xla
    dx/transpose     correlation of the stride-dilated, re-padded g with the flipped kernel,
                     channels swapped (dimension numbers HWOI, so no kernel transpose)
    dx/col2im        g (N Ho Wo, O) @ w^T (O, 9C), then the 9 taps scattered back by padding
    dx/polyphase     one stride-1 correlation of g per phase of the input grid (sub-kernels
                     w[r::s]), interleaved: ops.hand.correlation.correlate_input_grad_polyphase
  weight gradient dL/dw
    dw/autodiff      jax.vjp of fwd/xla
    dw/conv          the conv XLA's autodiff emits, written out: batch as the contracted feature
    dw/patches       lax.conv_general_dilated_patches, then patches^T (9C, N Ho Wo) @ g
    dw/slices        9 strided slices concatenated (no conv), then one matmul (9C, NP) @ (NP, O)
    dw/taps          one (C, N Ho Wo) @ (N Ho Wo, O) matmul per tap, stacked
  on oneDNN through XLA's FFI (cnn_jax.native, direct algorithm; listed first, only where built)
    fwd/onednn, dx/onednn, dw/onednn
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

LAYERS = {  # name: (H, C_in, C_out, stride)
    "s1": (32, 16, 16, 1),
    "s2": (16, 32, 32, 1),
    "s3": (8, 64, 64, 1),
    "strided": (32, 16, 32, 2),
}
PAD = ((1, 1), (1, 1))


def formulations(stride: int):
  """The functions to time for one stride, as ``{name: (fn, arg_names)}``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  s = (stride, stride)
  nhwc = ("NHWC", "HWIO", "NHWC")

  def fwd_xla(x, w):
    return lax.conv_general_dilated(x, w, s, PAD, dimension_numbers=nhwc)

  def fwd_nchw(x_nchw, w_oihw):
    return lax.conv_general_dilated(x_nchw, w_oihw, s, PAD,
                                    dimension_numbers=("NCHW", "OIHW", "NCHW"))

  def slices(x, out_hw):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = out_hw
    return jnp.concatenate([
        xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :]
        for i in range(3) for j in range(3)], axis=-1)  # (N, Ho, Wo, 9 C), tap-major

  def out_hw(x):
    return tuple((n + 2 - 3) // stride + 1 for n in x.shape[1:3])

  def fwd_im2col(x, w):
    p = slices(x, out_hw(x))
    y = p.reshape(-1, p.shape[-1]) @ w.reshape(-1, w.shape[-1])
    return y.reshape(p.shape[:3] + (w.shape[-1],))

  def dx_autodiff(x, w, g):
    return jax.vjp(lambda x_: fwd_xla(x_, w), x)[1](g)[0]

  def dw_autodiff(x, w, g):
    return jax.vjp(lambda w_: fwd_xla(x, w_), w)[1](g)[0]

  def dx_transpose(x, w, g):
    h = x.shape[1]
    extra = (h + 2 - 3) % stride  # input rows the forward never reached
    pads = ((2 - 1, 2 - 1 + extra),) * 2  # k-1-lo, k-1-hi+extra with k=3, lo=hi=1
    return lax.conv_general_dilated(g, jnp.flip(w, (0, 1)), (1, 1), pads, lhs_dilation=s,
                                    dimension_numbers=("NHWC", "HWOI", "NHWC"))

  def dx_col2im(x, w, g):
    n, h, wd, c = x.shape
    ho, wo = g.shape[1:3]
    dp = (g.reshape(-1, g.shape[-1]) @ w.reshape(-1, w.shape[-1]).T).reshape(n, ho, wo, 9, c)
    hp, wp = h + 2, wd + 2
    total = None
    for t in range(9):
      i, j = divmod(t, 3)
      rows = (i, hp - i - (ho - 1) * stride - 1, stride - 1)  # (lo, hi, interior)
      cols = (j, wp - j - (wo - 1) * stride - 1, stride - 1)
      tap = lax.pad(dp[:, :, :, t, :], jnp.zeros((), dp.dtype),
                    ((0, 0, 0), rows, cols, (0, 0, 0)))
      total = tap if total is None else total + tap
    return total[:, 1:1 + h, 1:1 + wd, :]

  def dx_polyphase(x, w, g):
    from cnn_jax.ops import correlation  # pylint: disable=g-import-not-at-top
    from cnn_jax.ops.hand import correlation as hand_correlation  # pylint: disable=g-import-not-at-top
    spec = correlation.window_spec(x.shape, (3, 3), s, PAD, 1)
    return hand_correlation.correlate_input_grad_polyphase(g, w, spec, x.shape, 1)

  def dw_conv(x, w, g):
    del w
    out = lax.conv_general_dilated(x, g, (1, 1), PAD, rhs_dilation=s,
                                   dimension_numbers=("CHWN", "IHWO", "HWNC"))
    return out[:3, :3]

  def dw_patches(x, w, g):
    p = lax.conv_general_dilated_patches(x, (3, 3), s, PAD, dimension_numbers=nhwc)
    c = x.shape[-1]
    dw = p.reshape(-1, p.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (C*9, O), channel-major
    return dw.reshape(c, 3, 3, -1).transpose(1, 2, 0, 3)

  def dw_slices(x, w, g):
    p = slices(x, g.shape[1:3])
    dw = p.reshape(-1, p.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (9C, O), tap-major
    return dw.reshape(w.shape)

  def dw_taps(x, w, g):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = g.shape[1:3]
    g2 = g.reshape(-1, g.shape[-1])
    taps = [xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :]
            .reshape(-1, x.shape[-1]).T @ g2 for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(w.shape)

  from cnn_jax import native  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops import correlation  # pylint: disable=g-import-not-at-top

  def fwd_onednn(x, w):
    spec = correlation.window_spec(x.shape, (3, 3), stride, PAD, 1)
    return native.correlate(x, w, spec, tile=0)

  def dx_onednn(x, w, g):
    return jax.vjp(lambda x_: fwd_onednn(x_, w), x)[1](g)[0]

  def dw_onednn(x, w, g):
    return jax.vjp(lambda w_: fwd_onednn(x, w_), w)[1](g)[0]

  library = {"fwd/onednn": (fwd_onednn, ("x", "w")), "dx/onednn": (dx_onednn, ("x", "w", "g")),
             "dw/onednn": (dw_onednn, ("x", "w", "g"))} if native.available() else {}
  return library | {
      "fwd/xla": (fwd_xla, ("x", "w")), "fwd/nchw": (fwd_nchw, ("x_nchw", "w_oihw")),
      "fwd/im2col": (fwd_im2col, ("x", "w")),
      "dx/autodiff": (dx_autodiff, ("x", "w", "g")),
      "dx/transpose": (dx_transpose, ("x", "w", "g")),
      "dx/col2im": (dx_col2im, ("x", "w", "g")),
      "dx/polyphase": (dx_polyphase, ("x", "w", "g")),
      "dw/autodiff": (dw_autodiff, ("x", "w", "g")), "dw/conv": (dw_conv, ("x", "w", "g")),
      "dw/patches": (dw_patches, ("x", "w", "g")), "dw/slices": (dw_slices, ("x", "w", "g")),
      "dw/taps": (dw_taps, ("x", "w", "g")),
  }


def study_layer(name: str, batch: int, repeats: int, only=None,
                cpu_convolutions: str = "eigen") -> dict:
  """Times every formulation on one layer; returns ``{formulation: {"ms", "gflops"}}``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  h, c_in, c_out, stride = LAYERS[name]
  ho = (h + 2 - 3) // stride + 1
  rng = np.random.default_rng(0)
  arrays = {
      "x": jnp.asarray(rng.standard_normal((batch, h, h, c_in), dtype=np.float32)),
      "w": jnp.asarray(rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) / 12),
      "g": jnp.asarray(rng.standard_normal((batch, ho, ho, c_out), dtype=np.float32)),
  }
  arrays["x_nchw"] = jnp.transpose(arrays["x"], (0, 3, 1, 2))
  arrays["w_oihw"] = jnp.transpose(arrays["w"], (3, 2, 0, 1))
  funcs = {k: v for k, v in formulations(stride).items() if only is None or k in only}
  from cnn_jax.train import steps  # pylint: disable=g-import-not-at-top
  options = steps.compiler_options(ynnpack_convolutions=cpu_convolutions == "xla_default")
  jitted = {k: (jax.jit(f, compiler_options=options), [arrays[a] for a in names])
            for k, (f, names) in funcs.items()}
  reference = {}
  for key, (f, args) in jitted.items():
    out = f(*args).block_until_ready()
    kind = key.split("/")[0]
    if kind == "fwd" and key == "fwd/nchw":
      out = jnp.transpose(out, (0, 2, 3, 1))
    if kind not in reference:
      reference[kind] = jitted[f"{kind}/{'xla' if kind == 'fwd' else 'autodiff'}"][0](
          *jitted[f"{kind}/{'xla' if kind == 'fwd' else 'autodiff'}"][1])
    # float32 sums of up to N*Ho*Wo terms in a different order: 1e-3 relative of the max.
    scale = float(jnp.max(jnp.abs(reference[kind])))
    err = float(jnp.max(jnp.abs(out - reference[kind])))
    if err > 1e-3 * scale:
      raise AssertionError(f"{name} {key}: max error {err} vs scale {scale}")
  times = {k: [] for k in jitted}
  for _ in range(repeats):
    for key, (f, args) in jitted.items():
      start = time.perf_counter()
      f(*args).block_until_ready()
      times[key].append(time.perf_counter() - start)
  flops = 2 * batch * ho * ho * 9 * c_in * c_out
  return {k: {"ms": 1e3 * statistics.median(t), "gflops": flops / statistics.median(t) / 1e9}
          for k, t in times.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--layers", default="s1,s2,s3,strided")
  parser.add_argument("--only", default="", help="comma-separated formulations (default all)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cpu_convolutions", default="eigen", choices=("eigen", "xla_default"),
                      help="which library XLA's CPU backend runs the convolutions with")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  layers = args.layers.split(",")
  for layer in layers:
    if layer not in LAYERS:
      parser.error(f"--layers: {layer!r} is not allowed: give some of {', '.join(LAYERS)}")
  only = set(args.only.split(",")) | {"fwd/xla", "dx/autodiff", "dw/autodiff"} if args.only \
      else None
  results = {layer: study_layer(layer, args.batch, args.repeats, only, args.cpu_convolutions)
             for layer in layers}
  load = os.getloadavg()[0]
  if args.json:
    print(json.dumps({"batch": args.batch, "cpu_convolutions": args.cpu_convolutions,
                      "load_avg": load, "layers": results}))
    return
  print(f"batch {args.batch}, median of {args.repeats} interleaved rounds, "
        f"cpu_convolutions={args.cpu_convolutions}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load avg {load:.2f}")
  for layer, table in results.items():
    h, c_in, c_out, stride = LAYERS[layer]
    print(f"{layer}: {h}x{h}, {c_in}->{c_out}, stride {stride}")
    for key, r in table.items():
      print(f"  {key:14s} {r['ms']:8.2f} ms  {r['gflops']:6.1f} GFLOP/s")


if __name__ == "__main__":
  main()
