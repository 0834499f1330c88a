"""Embedding networks: backbones with an L2-normalised embedding head.

Every model maps a batch of images to a dict with ``"embedding"`` (unit
vectors, ``(B, D)``) and, when the model has a classification head,
``"logits"`` (``(B, K)``), so that one train step serves every loss.
"""

from sphereembed.models.cnn import EmbeddingHead, SmallCNN

__all__ = ["EmbeddingHead", "SmallCNN"]
