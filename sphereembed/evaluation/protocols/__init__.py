"""Evaluation protocols: what a trained model is measured on, metrics and figures together.

Each protocol takes a trained model's outputs on its evaluation sets and
returns flat metrics (``metrics.json``), drawing its figures through
:mod:`sphereembed.plotting`. Methods (:mod:`sphereembed.methods`) choose them.

* :mod:`~sphereembed.evaluation.protocols.confidence`: calibration,
  selective accuracy and OOD detection of every confidence score of a
  centroid model.

Not imported by :mod:`sphereembed.evaluation` (the protocols sit above
:mod:`sphereembed.plotting`, which uses the metrics): import the modules.
"""
