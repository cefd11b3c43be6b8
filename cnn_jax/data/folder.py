"""A user's image tree as a dataset: ``root/train/<class>/*.png|jpg`` and ``root/test/<class>/``.

Class names are the sub-folder names of ``train/``, sorted; label = index in that order.
Images are decoded with Pillow; every image must have the same size (we never resize a
user's data silently). If every image is greyscale the arrays have 1 channel, otherwise all
images are converted to RGB. Files Pillow cannot read are skipped and counted (a warning
says how many); if no image is left the load fails.
"""

from __future__ import annotations

import logging
import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_GREY_MODES = ("1", "L", "I", "I;16", "F")


def _class_folders(split_dir: str) -> list[str]:
  return sorted(d for d in os.listdir(split_dir)
                if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith("."))


def _read_split(split_dir: str, class_names: list[str]):
  """Decodes all images of one split. Returns (list of PIL images, labels, paths, skipped)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images, labels, paths, skipped = [], [], [], 0
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    for filename in sorted(os.listdir(class_dir)):
      if not filename.lower().endswith(IMAGE_EXTENSIONS):
        continue
      path = os.path.join(class_dir, filename)
      try:
        with Image.open(path) as image:
          image.load()
          images.append(image.copy())
      except (OSError, ValueError, SyntaxError):
        # Pillow raises these for truncated/corrupt files; skip them, count them, carry on.
        skipped += 1
        continue
      labels.append(label)
      paths.append(path)
  return images, labels, paths, skipped


def load(root: str):
  """Reads ``root/train`` and ``root/test`` into uint8 arrays.

  Args:
    root: folder holding ``train/`` and ``test/``.

  Returns:
    (x_train, y_train, x_test, y_test, num_classes, class_names); x uint8 (N, H, W, C) with
    C = 1 (all greyscale) or 3.

  Raises:
    ValueError: one line naming the folder or file: missing folder, no classes, a test class
      unknown to train, no readable image, mismatched image sizes.
  """
  if not os.path.isdir(root):
    raise ValueError(f"folder:{root}: no such folder; expected {root}/train/<class>/*.png and "
                     f"{root}/test/<class>/*.png.")
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(root, split)):
      raise ValueError(f"folder:{root}: missing {os.path.join(root, split)}; expected "
                       f"train/<class>/ and test/<class>/ sub-folders.")
  class_names = _class_folders(os.path.join(root, "train"))
  if not class_names:
    raise ValueError(f"folder:{root}: {os.path.join(root, 'train')} has no class sub-folders.")
  unknown = sorted(set(_class_folders(os.path.join(root, "test"))) - set(class_names))
  if unknown:
    raise ValueError(f"folder:{root}: test classes {unknown} have no train folder; train "
                     f"classes are {class_names}.")
  splits, skipped_total = {}, 0
  for split in ("train", "test"):
    images, labels, paths, skipped = _read_split(os.path.join(root, split), class_names)
    skipped_total += skipped
    if not images:
      raise ValueError(f"folder:{root}: no readable image in {os.path.join(root, split)} "
                       f"({skipped} unreadable files skipped; extensions {IMAGE_EXTENSIONS}).")
    splits[split] = (images, labels, paths)
  if skipped_total:
    logging.warning("folder:%s: skipped %d unreadable image files.", root, skipped_total)
  all_images = splits["train"][0] + splits["test"][0]
  all_paths = splits["train"][2] + splits["test"][2]
  size = all_images[0].size
  for image, path in zip(all_images, all_paths):
    if image.size != size:
      raise ValueError(f"folder:{root}: {path} is {image.size[0]}x{image.size[1]} but "
                       f"{all_paths[0]} is {size[0]}x{size[1]}; all images must have one size.")
  grey = all(image.mode in _GREY_MODES for image in all_images)

  def to_array(image):
    if grey:
      array = np.asarray(image.convert("L"))[..., None]
    else:
      array = np.asarray(image.convert("RGB"))
    return array

  out = []
  for split in ("train", "test"):
    images, labels, _ = splits[split]
    out += [np.stack([to_array(image) for image in images]).astype(np.uint8),
            np.asarray(labels, np.int32)]
  return (*out, len(class_names), tuple(class_names))
