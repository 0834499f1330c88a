"""Host-side image augmentation, deterministic given a NumPy generator."""

from __future__ import annotations

import numpy as np

__all__ = ["random_translate"]


def random_translate(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Shifts every image by its own random offset in ``[-max_shift, max_shift]`` pixels.

  Vacated pixels are 0 (the background of MNIST-like data). One vectorised
  gather, no Python loop over images.

  Args:
    images: ``(B, H, W, C)`` array.
    max_shift: the largest shift per axis (0 returns ``images`` unchanged).
    rng: the generator that draws the offsets.

  Returns:
    An array of the shape and dtype of ``images``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data.augment import random_translate
    >>> x = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1)
    >>> y = random_translate(x, 1, np.random.default_rng(0))
    >>> print(y.shape, y.dtype, int(y.sum()) <= int(x.sum()))
    (1, 3, 3, 1) uint8 True
  """
  if max_shift < 0:
    raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
  if max_shift == 0:
    return images
  batch, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  dy, dx = rng.integers(-max_shift, max_shift + 1, size=(2, batch))
  rows = (np.arange(height)[None, :] + max_shift - dy[:, None])[:, :, None]
  cols = (np.arange(width)[None, :] + max_shift - dx[:, None])[:, None, :]
  return padded[np.arange(batch)[:, None, None], rows, cols]
