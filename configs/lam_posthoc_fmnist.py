"""Post-hoc LAM on Fashion-MNIST: a Laplace posterior over the deterministic network's last layer.

Command (from the repository root):
  python -m experiments.mnist --config=configs/lam_posthoc_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: configs/deterministic_fmnist.py's training (3000 steps), then one epoch of the same
batches accumulates the GGN of the attractive pairs ("positives") over the last layer, dense
(387 weights: 3 x 128 and the bias), and the marginal likelihood tunes the prior precision
(seconds); a few minutes on a 2-core CPU.
Why dense rather than the paper's diagonal: on one network trained 1500 steps (seed 0), the
dense posterior detected MNIST with AUROC 0.991 against 0.924 for the diagonal one, at the same
mAP@1 (0.855) and ECE (0.040 / 0.035); --config.structure=diagonal gives the paper's variant.
Measured (seeds 0 / 1 / 2, mean ± std; one CPU core each): mAP@1 0.868 ± 0.005; OOD AUROC
0.941 ± 0.045 (0.963 / 0.890 / 0.971), AUPRC 0.944 ± 0.042; AUSC 0.879 ± 0.005; ECE 0.049 ± 0.001.
(Weight samples through the dense precision's Cholesky factor; with its eigenvectors the same
seeds gave AUROC 0.958 / 0.908 / 0.960.)
The paper's Fashion-MNIST row (post-hoc LAM): OOD AUROC 0.96, AUSC 0.86.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("laplace_posthoc")
  config.structure = "full"
  config.tune_prior = True
  return config
