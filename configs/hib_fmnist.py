"""Hedged Instance Embeddings on Fashion-MNIST (a baseline of LAM).

Command (from the repository root):
  python -m experiments.mnist --config=configs/hib_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

The HIB model's MoG-1 head (sphereembed.models.hib.HIBEmbedding) on the SmallCNN trunk, trained
end to end by the HIB method's step (the VIB match loss on 1024 sampled pairs of each 130-image
batch, 8 samples per embedding, beta 1e-4; the match probability's a and b learned). Retrieval
ranks by the re-normalised mean; the uncertainty is the self-mismatch.
Budget: 3000 steps of 130 images, as configs/deterministic_fmnist.py; a few minutes on a 2-core
CPU.
Measured (seeds 0 / 1 / 2, mean ± std, one CPU core each): mAP@1 0.843 ± 0.007; OOD AUROC
0.136 ± 0.132 (0.288 / 0.051 / 0.069: the sigmas of the MNIST digits are *smaller* than those
of the Fashion-MNIST queries: an aleatoric head, not a novelty detector), AUPRC 0.334 ± 0.036;
AUSC 0.912 ± 0.005; ECE 0.057 ± 0.002. (With the unit-norm SmallCNN head and its own copy of the
VIB step, before the two HIB implementations became one: mAP@1 0.856 ± 0.001, AUROC 0.050 ±
0.020, AUSC 0.930 ± 0.004, ECE 0.064 ± 0.001.)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("retrieval_hib")
  return config
