"""Evaluation: retrieval, verification, calibration and uncertainty metrics in one place.

Pure functions on arrays (NumPy or JAX in, Python floats or NumPy arrays out),
one module per family, all re-exported here:

* :mod:`~sphereembed.evaluation.retrieval`: blocked exact kNN search,
  precision@1, R-precision, MAP@R, mAP@k, recall@k, kNN accuracy, NMI/AMI and
  the LAM protocol's retrieval calibration.
* :mod:`~sphereembed.evaluation.verification`: pair AP, ROC, TPR at FAR, EER,
  threshold calibration and an enrolment gallery.
* :mod:`~sphereembed.evaluation.calibration`: ECE, MCE, reliability diagrams,
  Brier score, accuracy at coverage and risk-coverage curves.
* :mod:`~sphereembed.evaluation.uncertainty`: OOD AUROC/AUPRC, sparsification
  (AUSC, AUSE), error-reject curves and uncertainty-performance correlations.
* :mod:`~sphereembed.evaluation.evaluators`: small objects with one ``run``
  returning a flat dict of named floats, for metric writers and tables.

:mod:`~sphereembed.evaluation.checks` holds the input checks these modules
(and :mod:`sphereembed.plotting`) share; it is imported by name, not
re-exported.

Conventions (larger score = more similar for verification, larger score =
more uncertain for OOD, fractions never percentages) are in each module's
docstring.
"""

from sphereembed.evaluation.retrieval import (
    KNNPrediction,
    RetrievalCalibration,
    clustering_metrics,
    knn_classify,
    nearest_neighbors,
    retrieval_calibration,
    retrieval_metrics,
    retrieval_metrics_from_neighbors,
    retrieval_metrics_per_query,
)
from sphereembed.evaluation.verification import (
    EnrolmentGallery,
    RocCurve,
    average_precision,
    calibrate_threshold,
    equal_error_rate,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    threshold_metrics,
    tpr_at_far,
    verification_ap,
)
from sphereembed.evaluation.calibration import (
    ReliabilityDiagram,
    RiskCoverageCurve,
    accuracy_at_coverage,
    aurc,
    brier_score,
    excess_aurc,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_diagram,
    risk_coverage_curve,
)
from sphereembed.evaluation.uncertainty import (
    BinnedPerformance,
    ErrorRejectCurve,
    SparsificationCurve,
    ause,
    ausc,
    binned_performance,
    error_reject_curve,
    kendall_tau,
    ood_auprc,
    ood_auroc,
    ood_fpr_at_tpr,
    oracle_ausc,
    prediction_rejection_ratio,
    sparsification_curve,
    spearman_rho,
    uncertainty_correlation,
)
from sphereembed.evaluation.evaluators import (
    CalibrationEvaluator,
    Evaluator,
    OODEvaluator,
    RetrievalEvaluator,
    SparsificationEvaluator,
    UncertaintyCorrelationEvaluator,
    VerificationEvaluator,
)

__all__ = [
    "BinnedPerformance",
    "CalibrationEvaluator",
    "EnrolmentGallery",
    "ErrorRejectCurve",
    "Evaluator",
    "KNNPrediction",
    "OODEvaluator",
    "ReliabilityDiagram",
    "RetrievalCalibration",
    "RetrievalEvaluator",
    "RiskCoverageCurve",
    "RocCurve",
    "SparsificationCurve",
    "SparsificationEvaluator",
    "UncertaintyCorrelationEvaluator",
    "VerificationEvaluator",
    "accuracy_at_coverage",
    "aurc",
    "ausc",
    "ause",
    "average_precision",
    "binned_performance",
    "brier_score",
    "calibrate_threshold",
    "clustering_metrics",
    "equal_error_rate",
    "error_reject_curve",
    "excess_aurc",
    "expected_calibration_error",
    "kendall_tau",
    "knn_classify",
    "maximum_calibration_error",
    "nearest_neighbors",
    "ood_auprc",
    "ood_auroc",
    "ood_fpr_at_tpr",
    "oracle_ausc",
    "precision_recall_curve",
    "prediction_rejection_ratio",
    "reliability_diagram",
    "retrieval_calibration",
    "retrieval_metrics",
    "retrieval_metrics_from_neighbors",
    "retrieval_metrics_per_query",
    "risk_coverage_curve",
    "roc_auc",
    "roc_curve",
    "sparsification_curve",
    "spearman_rho",
    "threshold_metrics",
    "tpr_at_far",
    "uncertainty_correlation",
    "verification_ap",
]
