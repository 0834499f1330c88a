"""Probability distributions on the sphere and the special functions behind them.

* :mod:`~sphereembed.distributions.bessel`: :func:`log_bessel_ive` and
  :func:`bessel_iv_ratio`, the modified Bessel function of the first kind in
  the forms the von Mises-Fisher distribution needs, accurate in float32 and
  float64 for every order and argument, with exact derivatives.
* :mod:`~sphereembed.distributions.von_mises_fisher`:
  :func:`vmf_log_normalizer`, :func:`mean_resultant_length`,
  :func:`inverse_mean_resultant_length` and :class:`VonMisesFisher`.
"""

from sphereembed.distributions.bessel import bessel_iv_ratio, log_bessel_ive
from sphereembed.distributions.von_mises_fisher import (
    VonMisesFisher,
    inverse_mean_resultant_length,
    log_sphere_area,
    mean_resultant_length,
    vmf_log_normalizer,
)

__all__ = [
    "VonMisesFisher",
    "bessel_iv_ratio",
    "inverse_mean_resultant_length",
    "log_bessel_ive",
    "log_sphere_area",
    "mean_resultant_length",
    "vmf_log_normalizer",
]
