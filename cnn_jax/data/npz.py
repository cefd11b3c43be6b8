"""A user's arrays as a dataset: one ``.npz`` file with ``x_train, y_train, x_test, y_test``.

Images are uint8 (or integers in 0..255) ``(N, H, W, C)``, ``(N, S, S)`` (square greyscale,
a channel axis is added) or ``(N, L, C)`` for 1-D data (any other 3-D shape); labels are
integers ``0..K-1``. The number of classes is ``max(label) + 1`` unless the file also holds an
integer ``num_classes`` (and optionally ``class_names``).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load(path: str):
  """Reads the four arrays (and optional ``num_classes``, ``class_names``) from ``path``.

  Returns:
    (x_train, y_train, x_test, y_test, num_classes, class_names).

  Raises:
    ValueError: one line naming the file and the problem (missing file, not an npz, missing
      arrays, bad num_classes). Shape/label checks follow in ``dataset.make_dataset``.
  """
  if not os.path.isfile(path):
    raise ValueError(f"npz:{path}: no such file.")
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = [key for key in REQUIRED if key not in archive.files]
      if missing:
        raise ValueError(f"npz:{path}: missing arrays {missing}; the file must hold "
                         f"{', '.join(REQUIRED)} (found {sorted(archive.files)}).")
      arrays = {key: archive[key] for key in REQUIRED}
      num_classes = int(archive["num_classes"]) if "num_classes" in archive.files else None
      class_names = (tuple(str(n) for n in archive["class_names"])
                     if "class_names" in archive.files else ())
  except ValueError as error:
    if str(error).startswith("npz:"):
      raise
    # NumPy's own ValueErrors here: pickled/object arrays, or not an npz at all.
    raise ValueError(f"npz:{path}: not a readable .npz of plain arrays ({error}).") from None
  except (OSError, zipfile.BadZipFile, EOFError) as error:
    raise ValueError(f"npz:{path}: not a readable .npz file ({error}).") from None
  # A 3-D array with square trailing dims, (N, S, S), is greyscale images (MNIST as commonly
  # saved); any other 3-D array is 1-D data (N, L, C).
  for key in ("x_train", "x_test"):
    x = arrays[key]
    if x.ndim == 3 and x.shape[1] == x.shape[2]:
      arrays[key] = x[..., None]
  labels = np.concatenate([arrays["y_train"].ravel(), arrays["y_test"].ravel()])
  if num_classes is None:
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"npz:{path}: labels have dtype {labels.dtype}; expected integers.")
    num_classes = int(labels.max()) + 1 if labels.size else 0
  return (arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], num_classes,
          class_names)
