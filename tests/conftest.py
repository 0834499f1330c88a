"""Test configuration: float64 available everywhere, float32 asked for explicitly.

Enabling x64 lets the tests compare against float64 references and run every
loss in both precisions; tests create float32 inputs with an explicit dtype.
"""

import jax

jax.config.update("jax_enable_x64", True)
