"""The gradient-check study: every hand-written VJP against autodiff and finite differences,
and every native kernel the trainer can run against float64 autodiff of the pure op.

``run(config, workdir)`` checks the grid ``config.grid`` ("full" or "quick") of
``cnn_jax.analysis.gradcheck`` (path ``ops.hand (XLA)``, float64) and of
``cnn_jax.analysis.native_gradcheck`` (paths ``native:...``, float32; none where the native
kernels cannot run here, and the table says why) with inputs drawn from ``config.seed``,
prints one table row per configuration as it goes, writes ``gradcheck.md``,
``gradcheck.csv`` and ``gradcheck_native.csv`` into ``workdir`` and returns a summary whose
``ok`` is False when any row exceeds its tolerance (the launcher turns that into a non-zero
exit code).
"""

from __future__ import annotations

import os

from cnn_jax import atomic
from cnn_jax.analysis import gradcheck, native_gradcheck


def run(config, workdir: str) -> dict:
  """Runs the gradient checker.

  Args:
    config: a ConfigDict with ``grid`` ("full" | "quick") and ``seed`` (int).
    workdir: folder for ``gradcheck.md`` and ``gradcheck.csv``.

  Returns:
    ``{"ok": bool, "grid", "seed", "tolerances", "num_rows", "num_failed",
    "rows": [row dicts], "failed": [row dicts that failed], "max_err_autodiff",
    "max_err_fd", "max_err_second"}``.

  Raises:
    ValueError: for an unknown ``config.grid`` or a non-int ``config.seed``, before any work.
  """
  grid_name = config.get("grid", "full")
  seed = config.get("seed", 0)
  cases = gradcheck.grid(grid_name)  # raises ValueError on a bad name, before any work
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r} is not allowed: give an int >= 0.")

  print(f"gradcheck: grid={grid_name} ({len(cases)} configurations), seed={seed}, "
        f"tolerances {gradcheck.TOLERANCES}")
  header = gradcheck.format_markdown([]).splitlines()
  print("\n".join(header), flush=True)

  def show(row):
    print(gradcheck.format_markdown([row]).splitlines()[-1], flush=True)

  rows = gradcheck.run_grid(grid_name, seed, cases=cases, progress=show)
  print("\n".join(native_gradcheck.format_markdown([]).splitlines()), flush=True)
  native_rows, native_missing = native_gradcheck.run(
      grid_name, seed,
      progress=lambda row: print(native_gradcheck.format_markdown([row]).splitlines()[-1],
                                 flush=True))
  if native_missing:
    print(f"native kernels not checked: {native_missing}")
  failed = [row for row in rows + native_rows if not row["passed"]]
  summary = {
      "ok": not failed,
      "grid": grid_name,
      "seed": seed,
      "tolerances": dict(gradcheck.TOLERANCES),
      "num_rows": len(rows),
      "native_rows": native_rows,
      "native_missing": native_missing,
      "num_failed": len(failed),
      "max_err_autodiff": max(r["err_autodiff"] for r in rows),
      "max_err_fd": max(r["err_fd"] for r in rows),
      "max_err_second": max(r["err_second"] for r in rows),
      "rows": rows,
      "failed": failed,
  }
  verdict = ("all rows pass" if summary["ok"]
             else f"{len(failed)} of {len(rows) + len(native_rows)} rows FAIL")
  text = (
      f"# Gradient check: hand-written VJPs vs autodiff and finite differences\n\n"
      f"grid `{grid_name}` ({len(rows)} configurations), seed {seed}, float64. "
      f"Tolerances: relative error vs autodiff <= {gradcheck.TOLERANCES['autodiff']:g}, "
      f"vs central finite differences <= {gradcheck.TOLERANCES['fd']:g}, second order "
      f"(grad of grad) vs autodiff <= {gradcheck.TOLERANCES['second']:g}.\n\n"
      f"**{verdict}.** Worst errors: autodiff {summary['max_err_autodiff']:.1e}, "
      f"FD {summary['max_err_fd']:.1e}, second order {summary['max_err_second']:.1e}.\n\n"
      + gradcheck.format_markdown(rows))
  notes = [f"- {r['op']} {r['shapes']} {r['padding']}: {r['note']}" for r in rows if r["note"]]
  if notes:
    text += "\nNotes:\n" + "\n".join(notes) + "\n"
  text += ("\n## Native kernels (float32) against float64 autodiff of the pure op\n\n"
           "What the trainer runs where `kernels` is `auto` or `native` (`(default)`: a "
           "kernel the default training config can run, `conv_algorithm=autotune` choosing "
           "per layer shape). Errors relative to the largest entry; tolerance "
           "per row: float32 rounding over the longest sum, `FACTOR * sqrt(sum_length) * "
           f"2^-24`, FACTOR {native_gradcheck.FACTOR} (second order: 3x).\n\n")
  text += (native_gradcheck.format_markdown(native_rows) if native_rows
           else f"Not checked here: {native_missing}.\n")
  atomic.write_text(os.path.join(workdir, "gradcheck.md"), text)
  atomic.write_text(os.path.join(workdir, "gradcheck.csv"), gradcheck.format_csv(rows))
  atomic.write_text(os.path.join(workdir, "gradcheck_native.csv"),
                    native_gradcheck.format_csv(native_rows))
  print(verdict)
  return summary
