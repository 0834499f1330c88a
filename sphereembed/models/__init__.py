"""Embedding networks: backbones with an L2-normalised embedding head.

Every model maps a batch of images to a dict with ``"embedding"`` (unit
vectors, ``(B, D)``) and, when the model has a classification head,
``"logits"`` (``(B, K)``), so that one train step serves every loss.

* :class:`SmallCNN`: the MNIST-family CNN.
* :class:`CifarResNet`, :data:`ResNet18`, :data:`ResNet34`: CIFAR ResNets with
  batch norm (statistics in the ``"batch_stats"`` collection) and optional
  bfloat16 compute (:mod:`sphereembed.models.resnet`).
* :func:`sphereembed.models.conv.conv_general_dilated`: ``nn.Conv``'s
  convolution with the strided input gradient in polyphase form (the
  ``SmallCNN(polyphase_gradient=True)``, the training loop's default; faster on CPU).
"""

from sphereembed.models.cnn import EmbeddingHead, SmallCNN
from sphereembed.models.resnet import BasicBlock, CifarResNet, ResNet18, ResNet34

__all__ = ["BasicBlock", "CifarResNet", "EmbeddingHead", "ResNet18", "ResNet34", "SmallCNN"]
