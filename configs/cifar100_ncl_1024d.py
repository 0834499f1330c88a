"""NCL on CIFAR-100 with a ResNet-18 and a 1024-D embedding.

Command (from the repository root; the data as experiments/cifar.py and
sphereembed.data.cifar.load_cifar explain: cifar-100-python/ or its .tar.gz under
--config.data_dir, $SPHEREEMBED_DATA_DIR or ../shared/data, or TFDS with --config.download=True
on a machine with internet):
  python -m experiments.mnist --config=configs/cifar100_ncl_1024d.py
  seeds: --config.seed=1, 2, ...; mean and std over seeds:
  python -m experiments.summarize runs/cifar100_ncl_1024d/*

Hardware: one GPU (e.g. an A100 / H100; every local GPU is used, the batch split over them, with
--config.num_devices=0). bfloat16 compute is an option: --config.dtype=bfloat16.
GPU budget: ResNet-18 (CIFAR variant, 11.2M parameters), 200 epochs of batch 512 (19,400 steps),
SGD + Nesterov momentum 0.9, learning rate 0.2 (flax's ImageNet rule 0.1 x 512 / 256) with 5 warm-up
epochs and cosine decay, weight decay 5e-4, random crop (padding 4) + horizontal flip: the usual
flax-ImageNet-style CIFAR recipe (sphereembed.training.config.cifar_config).

Reduced CPU run (the command above with a budget one CPU affords; a smoke run, not a result:
1-2 minutes on 2 shared cores, e.g. 70 s for cifar100_ncl_1024d on generated data in the
canonical format):
  python -m experiments.mnist --config=configs/cifar100_ncl_1024d.py --config.width=0.25 \
      --config.num_epochs=2 --config.max_train_examples=5000 --config.max_test_examples=2000 \
      --config.batch_size=128 --config.warmup_steps=20 --config.alpha_every=20 \
      --config.eval_every_steps=1000

Expected result: not measured yet (needs a GPU); the reference results of the N-Centroids Loss
report a nearest-centroid eval accuracy of 71.4 +- 0.35% and ACC@80% (the accuracy on the 80% of
test images closest to their centroid) of 80.2% on CIFAR-100 at 1024D (the targets for this
reproduction: 1024D >= 71.4%, 5D >= 62.6%). metrics.json holds test_accuracy and
test_accuracy_at_80.
"""

from sphereembed.methods.centroid import cifar_config


def get_config():
  config = cifar_config("cifar100", 1024, loss="ncl")
  return config
