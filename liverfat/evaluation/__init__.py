"""liverfat.evaluation: agreement, classification and segmentation statistics, method-comparison
tables, figures and the HTML report.

Pure: arrays and predictions tables in, numbers, tables and figures out; it never knows which
engine wrote a table. Modules:

- :mod:`~liverfat.evaluation.agreement`: Bland-Altman, ICC (all Shrout & Fleiss forms), MAE,
  RMSE, R², Pearson/Spearman, MAPE (:func:`~liverfat.evaluation.agreement.agreement`).
- :mod:`~liverfat.evaluation.classification`: steatosis detection at a threshold (ROC-AUC,
  sensitivity, specificity, accuracy, precision with seeded bootstrap intervals) and grading
  (confusion matrix, weighted kappa, one-vs-rest AUC).
- :mod:`~liverfat.evaluation.grader`: the grading schemes (on classification's thresholds) and
  the metrics of a grader's class probabilities (AUC, accuracy, bootstrap and Wilson intervals).
- :mod:`~liverfat.evaluation.segmentation`: Dice, Jaccard, volume difference, surface distances,
  and tables of them over subjects; :mod:`~liverfat.evaluation.overlays`: predicted and reference
  mask contours on the image; :mod:`~liverfat.evaluation.segmentation_report`: the report section
  of a method whose predictions table carries mask metrics.
- :mod:`~liverfat.evaluation.values`: predictions tables side by side (one column per method),
  coverage, failures, the reference table from a manifest, pairs and subsets.
- :mod:`~liverfat.evaluation.compare`: the comparison table per pair and subset, error
  correlation, grading, and :func:`~liverfat.evaluation.compare.run_comparison` with its
  :class:`~liverfat.evaluation.compare.ComparisonSettings`.
- :mod:`~liverfat.evaluation.layouts`: the comparison table as text (published layout, Markdown,
  LaTeX); :mod:`~liverfat.evaluation.covariates`: correlations with covariates;
  :mod:`~liverfat.evaluation.outliers`: top outliers and probable reference errors.
- :mod:`~liverfat.evaluation.curves`: learning curves (MAE and R² on a held-out part against
  the number of training subjects, summarised over repeats).
- :mod:`~liverfat.evaluation.repeatability`: test-retest agreement of repeat scans (pairs of
  visits, within-subject SD and repeatability coefficient with intervals, ICC(2,1),
  Bland-Altman of the second visit minus the first).
- :mod:`~liverfat.evaluation.plots` and :mod:`~liverfat.evaluation.report`: figures and one
  self-contained HTML report; :mod:`~liverfat.evaluation.cli`: ``liverfat compare``.
"""
