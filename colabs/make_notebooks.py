"""Writes the notebooks of this folder, with empty outputs, from the cells below.

Edit the cells here, then run ``python colabs/make_notebooks.py`` (from anywhere)
and commit the ``.ipynb`` files. Cell ids are fixed so that regenerating an
unchanged notebook gives the same file. ``tests/test_notebooks.py`` executes
every notebook in SMOKE mode and checks that the committed files carry no
outputs and have their "Open in Colab" badge.
"""

from __future__ import annotations

import pathlib
import textwrap

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

# The GitHub organisation in the Colab links is a placeholder until the repository is published.
GITHUB = "sphereembed/sphereembed"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/{github}/blob/main/colabs/{name}.ipynb)")


def _join(parts) -> str:
  return "\n\n".join(textwrap.dedent(part).strip() for part in parts)


def md(*parts: str) -> tuple[str, str]:
  """A markdown cell; each part is dedented on its own, parts are separate paragraphs."""
  return "markdown", _join(parts)


def code(*parts: str) -> tuple[str, str]:
  """A code cell; each part is dedented on its own."""
  return "code", _join(parts)


# ----------------------------------------------------------------------------- shared cells

INSTALL = code(f'''
    # On Colab: install sphereembed from GitHub. In a checkout of the repository: use it as is, offline.
    import importlib
    import pathlib
    import subprocess
    import sys

    IN_COLAB = "google.colab" in sys.modules
    REPOSITORY = "https://github.com/{GITHUB}"  # placeholder organisation
    try:
        import sphereembed
    except ImportError:
        checkout = pathlib.Path.cwd().parent  # this notebook's folder is colabs/
        if (checkout / "sphereembed" / "__init__.py").exists():
            sys.path.insert(0, str(checkout))
        else:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPOSITORY}}"],
                           check=True)
            importlib.invalidate_caches()
        import sphereembed
    print("sphereembed", sphereembed.__version__, "from", pathlib.Path(sphereembed.__file__).parent)
''')

SMOKE = '''
    # SPHEREEMBED_SMOKE=1 (set in CI) shrinks every run to seconds; leave it unset for the real thing.
    SMOKE = os.environ.get("SPHEREEMBED_SMOKE") == "1"
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, SMOKE={SMOKE}")
'''

DATA = '''
    ## Data

    `sphereembed.data.load_dataset` takes the first source that has the images: the folder in
    `$SPHEREEMBED_DATA_DIR`, then `../shared/data` next to the repository (the offline copy this project's
    machines and CI use), then TFDS. On Colab neither folder exists, so TFDS downloads the dataset
    (`download=IN_COLAB`; about 20 MB, once per runtime).
'''

NEXT = '''
    ## Where next

    * [`01_losses_quickstart`](01_losses_quickstart.ipynb): the loss library on its own.
    * [`02_ncl_mnist_2d`](02_ncl_mnist_2d.ipynb): NCL in 2-D, the centroids settling on the circle.
    * [`03_vmf_confidence`](03_vmf_confidence.ipynb): a kappa head as a calibrated confidence, OOD detection.
    * The full experiments: `python -m experiments.mnist --config=configs/<config>.py` from the repository root
      (the README lists every config and its result).
'''

# ----------------------------------------------------------------------------- 01

NB01 = [
    md('''
        # sphereembed 01: the losses, on their own

        {badge}

        Every loss in `sphereembed.losses` is a pure function of arrays: embeddings `(B, D)`, labels and a few
        keyword arguments in, a scalar out. So `jax.jit`, `jax.grad` and `jax.vmap` compose with them like with
        `jnp.sum`. This notebook walks through

        1. the geometry of the unit sphere, and why the great-circle distance needs care;
        2. every loss on one toy batch of 2-D embeddings, as the forces it puts on each point;
        3. `jit` / `vmap` / `grad`: a whole margin sweep in one vectorised call;
        4. the triplet miners' O(B²) memory against the naive B³ tensor.

        No data set and no training: it runs in well under a minute on a CPU runtime.
    '''),
    INSTALL,
    code('''
        import os
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np

        from sphereembed import l2_normalize, losses, pairwise_distances
        %matplotlib inline
    ''', SMOKE),
    md('''
        ## 1. Geometry on the sphere

        `pairwise_distances(x, y, metric=...)` offers four metrics. On unit vectors they are all functions of the
        angle θ between the points; only the great-circle distance is the angle itself.
    '''),
    code('''
        theta = jnp.linspace(0.0, jnp.pi, 181)
        u = jnp.array([[1.0, 0.0]])
        v = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)  # points on the unit circle
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for metric in ("euclidean", "squared_euclidean", "cosine", "great_circle"):
            ax.plot(theta, pairwise_distances(u, v, metric=metric)[0], label=metric)
        ax.set(xlabel="angle θ between the points (radians)", ylabel="distance")
        ax.legend(); ax.grid(alpha=0.3)
    '''),
    md('''
        The textbook `arccos(u·v)` has an infinite derivative at θ = 0 and θ = π, so one duplicate or antipodal
        pair in a batch turns every gradient into NaN. `sphereembed` computes the great-circle distance as
        `2·arcsin(‖u − v‖ / 2)`, and through the supplementary chord for obtuse angles: the gradient stays
        finite everywhere, the endpoints included.
    '''),
    code('''
        def great_circle(p):
            return pairwise_distances(u, p[None], metric="great_circle")[0, 0]

        def arccos_distance(p):
            return jnp.arccos(jnp.clip(u[0] @ p, -1.0, 1.0))

        angles = jnp.concatenate([jnp.array([0.0]), jnp.linspace(0.05, jnp.pi - 0.05, 60), jnp.array([jnp.pi])])
        points = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, fn, style in (("arccos(u·v)", arccos_distance, "o"), ("sphereembed great_circle", great_circle, ".")):
            norms = jnp.linalg.norm(jax.vmap(jax.grad(fn))(points), axis=1)
            ax.plot(angles, jnp.nan_to_num(norms, nan=-0.2), style, label=name, alpha=0.7)
            print(f"{name:>24}: gradient at θ = 0 and π: {norms[0]}, {norms[-1]}")
        ax.axhline(-0.2, color="tab:red", lw=0.8, ls=":")
        ax.text(1.2, -0.15, "NaN drawn here", color="tab:red")
        ax.set(xlabel="θ", ylabel="‖∂d/∂v‖", title="gradient of the distance")
        ax.legend(); ax.grid(alpha=0.3)
    '''),
    md('''
        ## 2. Every loss on one toy batch

        Four classes of 2-D unit vectors, scattered around four directions. For each loss we compute the value and
        its gradient with respect to the embeddings: the arrows show `−∇`, the direction gradient descent moves each
        point (rescaled per panel). NCL pulls every point towards its class centroid (stars) and away from the
        others; the triplet and contrastive losses act between samples of the batch only.
    '''),
    code('''
        key_points, key_noise, key_centroids = jax.random.split(jax.random.PRNGKey(0), 3)
        num_classes, per_class = 4, 12
        labels = jnp.repeat(jnp.arange(num_classes), per_class)
        directions = jnp.array([0.3, 1.9, 3.4, 4.6])  # class directions (radians), two of them close
        angle = directions[labels] + 0.45 * jax.random.normal(key_noise, labels.shape)
        embeddings = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
        centroids = l2_normalize(jnp.stack([jnp.cos(directions), jnp.sin(directions)], axis=1)
                                 + 0.3 * jax.random.normal(key_centroids, (num_classes, 2)))

        toy_losses = {
            "ncl": lambda e: losses.ncl(e, labels, centroids),
            "triplet_batch_all": lambda e: losses.triplet_batch_all(e, labels, margin=0.2),
            "triplet_batch_hard": lambda e: losses.triplet_batch_hard(e, labels, margin=0.2),
            "triplet_semi_hard": lambda e: losses.triplet_semi_hard(e, labels, margin=0.2),
            "contrastive": lambda e: losses.contrastive(e, labels, margin=1.0),
            "ntxent": lambda e: losses.ntxent(e, labels, temperature=0.1),
        }

        colors = plt.get_cmap("tab10").colors
        circle = np.linspace(0, 2 * np.pi, 200)
        fig, axes = plt.subplots(2, 3, figsize=(12, 8))
        for ax, (name, loss_fn) in zip(axes.flat, toy_losses.items()):
            value, grad = jax.jit(jax.value_and_grad(loss_fn))(embeddings)
            arrows = -grad / (jnp.abs(grad).max() + 1e-12)
            ax.plot(np.cos(circle), np.sin(circle), color="0.85")
            ax.scatter(*embeddings.T, c=[colors[k] for k in labels], s=18, zorder=3)
            ax.quiver(*embeddings.T, *arrows.T, color=[colors[k] for k in labels], angles="xy",
                      scale_units="xy", scale=2.5, width=0.006)
            if name == "ncl":
                ax.scatter(*centroids.T, marker="*", s=250, c=colors[:num_classes], edgecolors="k", zorder=4)
            ax.set_title(f"{name}: {float(value):.3f}")
            ax.set_aspect("equal"); ax.axis("off")
        fig.tight_layout()
    '''),
    md('''
        Labels may also be multi-hot `(B, C)` (samples sharing any label are positives), and every loss takes
        per-sample `weights`. Bad input is a clear `ValueError` at the call, never a NaN later:
    '''),
    code('''
        try:
            losses.triplet_batch_hard(embeddings.at[3, 0].set(jnp.nan), labels)
        except ValueError as error:
            print("ValueError:", error)
    '''),
    md('''
        ## 3. `jit`, `grad` and `vmap` compose

        Losses have no hidden state and no Python-side branching on values, so they compile once per shape. The
        margin (or temperature) is an ordinary argument: `vmap` over it gives a whole sweep in one compiled call.
    '''),
    code('''
        step = jax.jit(jax.value_and_grad(losses.triplet_semi_hard))
        value, grad = step(embeddings, labels)
        print(f"semi-hard loss {float(value):.4f}, gradient {grad.shape}, finite: {bool(jnp.isfinite(grad).all())}")

        batch = l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (128, 16)))
        batch_labels = jnp.arange(128) % 10
        margins = jnp.linspace(0.0, 2.0, 41)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in ("triplet_batch_all", "triplet_batch_hard", "triplet_semi_hard", "contrastive"):
            sweep = jax.jit(jax.vmap(lambda m: getattr(losses, name)(batch, batch_labels, margin=m)))
            ax.plot(margins, sweep(margins), label=name)
        ax.set(xlabel="margin", ylabel="loss", title="one vmap per curve: 41 margins, B = 128, D = 16")
        ax.legend(); ax.grid(alpha=0.3)
    '''),
    md('''
        ## 4. Memory-bounded mining against the naive B³ tensor

        The usual batch-all triplet loss builds every (anchor, positive, negative) triplet: a `B × B × B` tensor,
        8.6 GB of float32 at B = 1024 for the loss and its gradient. `sphereembed` sorts each anchor's negative
        distances once and answers every triplet question with a binary search, which needs O(B²) memory and
        O(B² log B) time and gives the same value and gradient. Below, a naive version written the usual way,
        checked against ours, then both compared: XLA's own account of the temporary memory of the compiled loss
        and gradient, and the measured time.
    '''),
    code('''
        def naive_batch_all(embeddings, labels, margin=0.2):
            """The textbook batch-all triplet loss: every triplet materialised."""
            d = pairwise_distances(embeddings)
            same = labels[:, None] == labels[None, :]
            positive = same & ~jnp.eye(len(labels), dtype=bool)
            valid = positive[:, :, None] & ~same[:, None, :]  # (anchor, positive, negative)
            hinge = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)
            active = valid & (hinge > 0)
            return jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(active), 1)

        e = l2_normalize(jax.random.normal(jax.random.PRNGKey(2), (256, 32)))
        l = jnp.arange(256) % 10
        ours, g_ours = jax.jit(jax.value_and_grad(losses.triplet_batch_all))(e, l)
        naive, g_naive = jax.jit(jax.value_and_grad(naive_batch_all))(e, l)
        print(f"same loss: {float(ours):.6f} (ours) vs {float(naive):.6f} (naive)")
        print("same gradient:", bool(jnp.allclose(g_ours, g_naive, atol=1e-5)))
    '''),
    code('''
        def measure(fn, b, run=True, repeats=3):
            """Temporary memory of the compiled loss + gradient (XLA's account), and seconds per call."""
            x = l2_normalize(jax.random.normal(jax.random.PRNGKey(b), (b, 64)))
            y = jnp.arange(b, dtype=jnp.int32) % 10
            step = jax.jit(jax.value_and_grad(fn)).lower(x, y).compile()  # compiling allocates nothing
            analysis = step.memory_analysis()
            memory = None if analysis is None else analysis.temp_size_in_bytes / 2**20
            if not run:
                return memory, None
            jax.block_until_ready(step(x, y))
            best = float("inf")
            for _ in range(repeats):  # the best of a few calls: the least disturbed by other work
                start = time.perf_counter()
                jax.block_until_ready(step(x, y))
                best = min(best, time.perf_counter() - start)
            return memory, best

        sizes = [64, 128, 256] if SMOKE else [64, 128, 256, 512, 1024, 2048, 4096]
        results = {
            "sphereembed (sorted rows)": [measure(losses.triplet_batch_all, b) for b in sizes],
            # The naive one is only compiled beyond B = 512: running it takes seconds, then minutes.
            "naive B³": [measure(naive_batch_all, b, run=b <= 512) for b in sizes],
        }

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for name, measured in results.items():
            memory, seconds = zip(*measured)
            if None not in memory:
                left.loglog(sizes, memory, "o-", label=name)
            ran = [(b, t) for b, t in zip(sizes, seconds) if t is not None]
            right.loglog(*zip(*[(b, 1e3 * t) for b, t in ran]), "o-", label=name)
        left.set(xlabel="batch size B", ylabel="temporary memory (MiB)", title="loss + gradient, D = 64, float32")
        right.set(xlabel="batch size B", ylabel="milliseconds per step", title="measured on this runtime")
        for ax in (left, right):
            ax.legend(); ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
    '''),
    md(NEXT),
]

# ----------------------------------------------------------------------------- 02

NB02 = [
    md('''
        # sphereembed 02: the N-Centroids Loss on MNIST, in two dimensions

        {badge}

        With a 2-D embedding every image becomes a point on the unit circle, so we can watch training happen. The
        N-Centroids Loss (NCL) pulls each embedding towards its class centroid and pushes it from the nearest and
        the average other centroid; the centroids are not parameters but follow their classes' embeddings by an
        exponential moving average (EMA) whose rate decays over training. We train the small CNN of the
        experiments, take snapshots of the test embeddings and the centroids, and classify by the nearest centroid.

        The full run (10 epochs, 98.3% test accuracy) is `python -m experiments.mnist --config=configs/ncl_2d.py`;
        here a few epochs suffice to see it (a few seconds with `SMOKE`).
    '''),
    INSTALL,
    code('''
        import os
        import tempfile

        import jax
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        from IPython.display import Image, display

        from sphereembed import data, plotting
        from sphereembed.models import SmallCNN
        from sphereembed.training.config import default_config
        from sphereembed.training.state import create_train_state
        from sphereembed.training.steps import LossSpec, embed_dataset, nearest_centroid, train_step
        %matplotlib inline
    ''', SMOKE),
    md(DATA),
    code('''
        mnist = data.load_dataset("mnist", download=IN_COLAB)
        train, test = mnist.train, mnist.test
        print(f"{len(train)} training and {len(test)} test images from {mnist.source}")
        fig, axes = plt.subplots(1, 10, figsize=(10, 1.3))
        for k, ax in enumerate(axes):
            ax.imshow(train.images[np.flatnonzero(train.labels == k)[0], :, :, 0], cmap="gray_r")
            ax.set_title(str(k)); ax.axis("off")
    '''),
    md('''
        ## The model, the loss and the centroids

        The config is the one of `configs/ncl_2d.py` (`default_config()`; every field is documented in
        `sphereembed/training/config.py`). `train_step(state, batch, spec)` is one jitted pure function: the loss
        against the current centroids, an AdamW update, then the centroid EMA
        `c ← normalise(α·c_batch + (1 − α)·c)`. Batches are P × K class-balanced (10 classes × 13 images), so every
        step moves every centroid.
    '''),
    code('''
        config = default_config()
        sampler = data.ClassBalancedSampler(train.labels, config.classes_per_batch, config.samples_per_class,
                                            seed=config.seed)
        num_steps = 150 if SMOKE else 3 * sampler.num_batches  # 3 epochs: about a minute on a CPU runtime
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                      min(config.warmup_steps, num_steps // 2), num_steps)
        model = SmallCNN(config.embedding_dim, features=tuple(config.features), kernel_size=config.kernel_size)
        state = create_train_state(model, optax.adamw(schedule, weight_decay=config.weight_decay),
                                   jax.random.PRNGKey(config.seed), train.images[:1], mnist.num_classes)
        spec = LossSpec(name="ncl", metric=config.metric, negative_weight=config.negative_weight,
                        alpha_base=config.alpha_base, alpha_decay=config.alpha_decay,
                        alpha_every=config.alpha_every)
        print(f"{num_steps} steps of {config.classes_per_batch} x {config.samples_per_class} images; "
              f"loss {spec.name}, metric {spec.metric}, negative weight {spec.negative_weight}")
    '''),
    md('''
        ## Training, with snapshots

        Snapshots come at roughly log-spaced steps: most of the motion happens early.
    '''),
    code('''
        watch = test.images[:1000], test.labels[:1000]  # the test images drawn in the snapshots
        snapshot_steps = {0} | {int(s) for s in np.geomspace(1, num_steps, 7).round()}
        snapshots, history = [], []

        def snapshot(step, alpha):
            embedded = embed_dataset(state, watch[0])["embedding"]
            snapshots.append((step, alpha, embedded, np.asarray(state.centroids)))

        snapshot(0, spec.alpha_base)  # the random initial network and centroids
        batches = sampler.iterate()
        for step in range(1, num_steps + 1):
            index = next(batches)
            state, metrics = train_step(state, {"image": train.images[index], "label": train.labels[index]}, spec)
            history.append(jax.device_get(metrics))
            if step in snapshot_steps:
                snapshot(step, float(metrics["alpha"]))
        print(f"final training loss {history[-1]['loss']:.3f}")
    '''),
    code('''
        colors = plt.get_cmap("tab10").colors
        circle = np.linspace(0, 2 * np.pi, 200)
        fig, axes = plt.subplots(2, 4, figsize=(14, 7.4), layout="constrained")
        for ax, (step, alpha, embedded, centroids) in zip(axes.flat, snapshots):
            ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=1)
            radius = 1 + 0.06 * (watch[1][:, None] - 4.5) / 10  # each class on its own thin ring
            ax.scatter(*(radius * embedded).T, c=[colors[k] for k in watch[1]], s=3, alpha=0.5)
            ax.scatter(*centroids.T, marker="*", s=200, c=colors, edgecolors="k", zorder=3)
            for k, c in enumerate(centroids):
                ax.annotate(str(k), 1.22 * c, ha="center", va="center", fontsize=8)
            ax.set_title(f"step {step}, α = {alpha:.3f}")
            ax.set_xlim(-1.35, 1.35); ax.set_ylim(-1.35, 1.35); ax.set_aspect("equal"); ax.axis("off")
        for ax in axes.flat[len(snapshots):]:
            ax.axis("off")
        fig.suptitle("test embeddings (dots) and class centroids (stars) during training")
    '''),
    code('''
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
        left.plot([h["loss"] for h in history]); left.set(xlabel="step", title="NCL training loss")
        right.plot([h["alpha"] for h in history]); right.set(xlabel="step", title="centroid EMA rate α")
        for ax in (left, right):
            ax.grid(alpha=0.3)
        fig.tight_layout()
    '''),
    md('''
        ## Nearest-centroid accuracy

        A test image is classified by its nearest centroid: no classifier head. The figure is the one
        `python -m experiments.mnist` writes to its workdir (`sphereembed.plotting.plot_circle`).
    '''),
    code('''
        evaluated = test if not SMOKE else data.Split(test.images[:2000], test.labels[:2000])
        embedded = embed_dataset(state, evaluated.images)["embedding"]
        predicted = np.asarray(nearest_centroid(embedded, state.centroids, config.metric))
        correct = predicted == evaluated.labels
        per_class = [correct[evaluated.labels == k].mean() for k in range(mnist.num_classes)]
        print(f"nearest-centroid accuracy on {len(evaluated)} test images: {100 * correct.mean():.2f}%")

        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.bar(range(10), 100 * np.array(per_class), color=colors)
        ax.set(xticks=range(10), xlabel="digit", ylabel="accuracy (%)", ylim=(min(per_class) * 100 - 5, 100),
               title="per-class nearest-centroid accuracy")
        ax.grid(alpha=0.3, axis="y")

        path = os.path.join(tempfile.mkdtemp(), "embeddings.png")
        plotting.plot_circle(embedded, evaluated.labels, np.asarray(state.centroids), path,
                             title=f"test embeddings, accuracy {100 * correct.mean():.2f}%")
        display(Image(path))
    '''),
    md('''
        The same training, with checkpoints, resumption, TensorBoard logs and `metrics.json`, is
        `sphereembed.training.loop.train_and_evaluate(config, workdir)`, which `python -m experiments.mnist`
        runs. Try `config.embedding_dim = 3` there for the sphere.
    ''', NEXT),
]

# ----------------------------------------------------------------------------- 03

NB03 = [
    md('''
        # sphereembed 03: kappa as a calibrated confidence, and out-of-distribution detection

        {badge}

        An embedding should say how much to trust it. Next to the unit embedding `x`, the network predicts a
        concentration κ(x) ≥ 0, trained by the negative log-likelihood of a von Mises-Fisher distribution
        `vMF(x; c_y, κ(x))` around the sample's class centroid, on top of the N-Centroids Loss: a large κ says "this
        embedding sits tightly at its centroid". At test time:

        * κ itself ranks samples from sure to unsure (selective prediction, out-of-distribution detection);
        * the vMF class posterior `p(k | x) = softmax(κ(x) · cos(x, c_k))` turns it into a probability, and a
          temperature fitted on held-out images calibrates it.

        We train that model in 2-D on MNIST, then draw the figures of the vMF issue: the embedding coloured by κ,
        reliability diagrams before and after temperature scaling, risk-coverage curves, and box plots of the
        confidence of correct, wrong and Fashion-MNIST (out-of-distribution) images.
        The full run is `python -m experiments.mnist --config=configs/ncl_vmf_2d.py`.
    '''),
    INSTALL,
    code('''
        import os

        import jax
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        from IPython.display import display

        from sphereembed import confidence, data, plotting
        from sphereembed.models import SmallCNN
        from sphereembed.training.confidence_eval import evaluate_confidence
        from sphereembed.training.config import default_config
        from sphereembed.training.state import create_train_state
        from sphereembed.training.steps import LossSpec, embed_dataset, nearest_centroid, train_step
        %matplotlib inline
    ''', SMOKE),
    md(DATA, '''
        Fashion-MNIST's test set plays the out-of-distribution images: same size, same grey levels, no digits.
    '''),
    code('''
        mnist = data.load_dataset("mnist", download=IN_COLAB)
        fashion = data.load_dataset("fashion_mnist", download=IN_COLAB)
        print("MNIST from", mnist.source, "\\nFashion-MNIST from", fashion.source)
        fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
        for k in range(10):
            for row, (dataset, name) in enumerate(((mnist, "in"), (fashion, "OOD"))):
                axes[row, k].imshow(dataset.test.images[k, :, :, 0], cmap="gray_r")
                axes[row, k].axis("off")
            axes[0, k].set_title(str(mnist.test.labels[k]))
        axes[0, 0].text(-8, 14, "MNIST", rotation=90, va="center")
        axes[1, 0].text(-8, 14, "OOD", rotation=90, va="center")
    '''),
    md('''
        ## The config of `configs/ncl_vmf_2d.py`

        NCL shapes the embedding; the vMF likelihood trains κ only (`confidence_embedding_gradient = False`, so
        the likelihood cannot pull embeddings towards the centroids to win concentration). 5,000 training images
        are held out for the temperature.
    '''),
    code('''
        config = default_config()
        config.confidence = "vmf"
        config.confidence_embedding_gradient = False
        config.validation_examples = 5000
        config.ood_dataset = "fashion_mnist"

        # The held-out split: a fixed permutation, as the experiments' loop draws it.
        order = np.random.default_rng(12345).permutation(len(mnist.train))
        held_out, kept = np.sort(order[:config.validation_examples]), np.sort(order[config.validation_examples:])
        train = data.Split(mnist.train.images[kept], mnist.train.labels[kept])
        validation = data.Split(mnist.train.images[held_out], mnist.train.labels[held_out])
        test, ood = mnist.test, fashion.test
        if SMOKE:
            validation, test, ood = (data.Split(s.images[:1000], s.labels[:1000]) for s in (validation, test, ood))

        sampler = data.ClassBalancedSampler(train.labels, config.classes_per_batch, config.samples_per_class,
                                            seed=config.seed)
        num_steps = 200 if SMOKE else 4 * sampler.num_batches
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                      min(config.warmup_steps, num_steps // 2), num_steps)
        model = SmallCNN(config.embedding_dim, confidence="kappa", kappa_max=config.kappa_max)
        state = create_train_state(model, optax.adamw(schedule, weight_decay=config.weight_decay),
                                   jax.random.PRNGKey(config.seed), train.images[:1], mnist.num_classes)
        spec = LossSpec(name="ncl", metric=config.metric, negative_weight=config.negative_weight,
                        alpha_base=config.alpha_base, alpha_decay=config.alpha_decay,
                        alpha_every=config.alpha_every, confidence="vmf",
                        confidence_weight=config.confidence_weight,
                        confidence_embedding_gradient=config.confidence_embedding_gradient)
        print(f"{num_steps} steps; {len(train)} training, {len(validation)} held-out, {len(test)} test, "
              f"{len(ood)} OOD images")
    '''),
    code('''
        history = []
        batches = sampler.iterate()
        for step in range(num_steps):
            index = next(batches)
            state, metrics = train_step(state, {"image": train.images[index], "label": train.labels[index]}, spec)
            history.append(jax.device_get(metrics))

        fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
        for ax, key in zip(axes, ("loss_ncl", "loss_vmf_nll", "kappa_mean")):
            ax.plot([h[key] for h in history]); ax.set(xlabel="step", title=key); ax.grid(alpha=0.3)
        fig.tight_layout()
    '''),
    md('''
        ## κ on the circle

        The model's outputs on every set: the embedding and κ. Samples between two classes, where the nearest
        centroid is a close call, should get a small κ.
    '''),
    code('''
        outputs = {name: embed_dataset(state, split.images)
                   for name, split in (("test", test), ("validation", validation), ("ood", ood))}
        centroids = np.asarray(state.centroids)
        kappa, ood_kappa = outputs["test"]["kappa"], outputs["ood"]["kappa"]
        predicted = np.asarray(nearest_centroid(outputs["test"]["embedding"], centroids, config.metric))
        correct = predicted == test.labels
        print(f"nearest-centroid accuracy {100 * correct.mean():.2f}%; "
              f"median κ: {np.median(kappa):.1f} (MNIST test), {np.median(ood_kappa):.1f} (Fashion-MNIST)")
        # κ spans orders of magnitude: colour by log(1 + κ) so that the uncertain regions stand out.
        plotting.plot_embeddings_by_confidence(outputs["test"]["embedding"], np.log1p(kappa), labels=test.labels,
                                               title="MNIST test embeddings coloured by log(1 + κ)")
    '''),
    md('''
        ## From κ to a calibrated probability

        The vMF class posterior is a softmax of `κ(x) · cos(x, c_k)`: its maximum is a confidence in [0, 1].
        Nothing makes it calibrated, so `confidence.fit_temperature` fits one temperature T on the held-out
        images (minimising their negative log-likelihood) and the calibrated probabilities are
        `softmax(log p / T)`. A reliability diagram bins the test images by confidence: a calibrated model's bars
        follow the diagonal. Temperature scaling minimises the held-out negative log-likelihood, not the ECE: where
        the raw posterior is already close to calibrated it can leave the ECE no better, or worse. Compare the
        titles.
    '''),
    code('''
        def log_posterior(name):
            return np.asarray(confidence.vmf_class_log_posterior(outputs[name]["embedding"], centroids,
                                                                 outputs[name]["kappa"]))

        temperature = confidence.fit_temperature(log_posterior("validation"), validation.labels)
        raw = np.asarray(jax.nn.softmax(log_posterior("test")))
        calibrated = np.asarray(jax.nn.softmax(log_posterior("test") / temperature))
        print(f"temperature fitted on {len(validation)} held-out images: T = {temperature:.3f}")
        for name, probabilities in (("vMF posterior", raw), (f"after temperature scaling (T = {temperature:.2f})",
                                                             calibrated)):
            display(plotting.plot_reliability_diagram(probabilities.max(axis=1),
                                                      probabilities.argmax(axis=1) == test.labels, title=name))
    '''),
    md('''
        ## Selective prediction: risk against coverage

        Keep only the most confident fraction of the test images (the coverage) and measure the error rate of
        what is kept (the risk). A good confidence has a low curve; the dashed one ranks every error last. κ is
        compared with the simplest score there is, the cosine to the nearest centroid.
    '''),
    code('''
        scores = {"κ": kappa, "cosine to the nearest centroid": (outputs["test"]["embedding"] @ centroids.T).max(axis=1),
                  "calibrated vMF posterior": calibrated.max(axis=1)}
        plotting.plot_risk_coverage(scores, correct, title="risk-coverage, MNIST test")
    '''),
    md('''
        ## Out-of-distribution: Fashion-MNIST

        Fashion-MNIST images still land on the circle, often near some digit's centroid, so the nearest centroid
        alone cannot reject them. Their κ should be low. Box plots of κ for correct, wrong and OOD images, then
        the ROC curve of detecting OOD images by low κ (or low cosine).
    '''),
    code('''
        display(plotting.plot_confidence_boxplot(kappa, correct, ood_kappa, ylabel="κ",
                                                 title="κ of correct, wrong and OOD images"))
        is_ood = np.concatenate([np.zeros(len(kappa)), np.ones(len(ood_kappa))])
        ood_cosine = (outputs["ood"]["embedding"] @ centroids.T).max(axis=1)
        plotting.plot_roc_curves(
            {"-κ": (-np.concatenate([kappa, ood_kappa]), is_ood),
             "-cosine": (-np.concatenate([scores["cosine to the nearest centroid"], ood_cosine]), is_ood)},
            title="detecting Fashion-MNIST among MNIST test images")
    '''),
    md('''
        ## Every score at once

        `evaluate_confidence` is what `python -m experiments.mnist` writes to `metrics.json`: for every score the
        model has (here the centroid cosine and κ), accuracy at 80% coverage, ECE before and after temperature
        scaling, OOD AUROC and more.
    '''),
    code('''
        results = evaluate_confidence(outputs["test"], test.labels, centroids,
                                      validation_outputs=outputs["validation"],
                                      validation_labels=validation.labels, ood_outputs=outputs["ood"])
        shown = {"accuracy": "accuracy", "accuracy_at_80": "accuracy at\\n80% coverage",
                 "probabilities/ece": "ECE\\n(raw)", "calibrated/ece": "ECE\\n(calibrated)",
                 "ood_auroc": "OOD AUROC\\n(Fashion-MNIST)"}
        fig, ax = plt.subplots(figsize=(9, 3.2))
        width = 0.38
        for i, score in enumerate(("centroid", "kappa")):
            values = [results[f"{score}/{key}"] for key in shown]
            bars = ax.bar(np.arange(len(shown)) + (i - 0.5) * width, values, width, label=score)
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(shown)), list(shown.values()))
        ax.set(ylim=(0, 1.12), title="evaluate_confidence: the centroid cosine and κ")
        ax.legend(loc="upper left", bbox_to_anchor=(1, 1)); ax.grid(alpha=0.3, axis="y")
    '''),
    md(NEXT),
]

NOTEBOOKS = {
    "01_losses_quickstart": NB01,
    "02_ncl_mnist_2d": NB02,
    "03_vmf_confidence": NB03,
}


def build(name: str, cells) -> nbformat.NotebookNode:
  """One notebook with empty outputs and fixed cell ids."""
  notebook = nbformat.v4.new_notebook()
  notebook.metadata = {
      "colab": {"name": f"{name}.ipynb", "provenance": []},
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
  }
  for index, (kind, source) in enumerate(cells):
    source = source.replace("{badge}", BADGE.format(github=GITHUB, name=name))
    cell = (nbformat.v4.new_markdown_cell(source) if kind == "markdown"
            else nbformat.v4.new_code_cell(source))
    cell.id = f"{name[:2]}-{index:02d}"
    notebook.cells.append(cell)
  nbformat.validate(notebook)
  return notebook


def main() -> None:
  for name, cells in NOTEBOOKS.items():
    path = HERE / f"{name}.ipynb"
    nbformat.write(build(name, cells), path)
    print("wrote", path)


if __name__ == "__main__":
  main()
