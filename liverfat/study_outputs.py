"""What a study's output folder holds: the ``README.txt`` :func:`liverfat.study.run_study`
writes beside its outputs (kept here, apart from the runner)."""

OUTPUTS_README = """What this folder holds
=====================
study.yaml            the study file that produced it
versions.json         package versions used
predictions/NAME.csv  each engine's predictions table (out-of-fold on the training split,
                      fitted-model predictions elsewhere) with NAME.run.json beside it;
                      NAME.cv.csv / NAME.fit.csv are the stages, *.done.json their fingerprints
engines/NAME/         engine caches, per-subject outputs and the fitted engine (resumable)
tables/               comparison.csv/.md/.tex (the published layout), coverage, failures,
                      error correlations, outliers, grading, covariate correlations, values
learning_curve/       with a learning_curve option: subjects.json (held-out part, each repeat's
                      draw order) and predictions/NAME.rR.nN.csv, one table per cell
                      (engine, repeat, training size), with *.done.json fingerprints
tables/learning_curve.csv, learning_curve_summary.csv
                      MAE and R2 per cell, and their median and min-max over repeats
figures/learning_curve.png/.svg
                      MAE and R2 against N, one line per method
qc/                   with a qc option: qc.csv, qc_summary.csv, excluded.csv, thumbnails/
                      ('mark' flags: 'qc: CHECK (why)' in every predictions table's message)
tables/repeatability.csv, repeatability_pairs.csv, figures/repeatability.png/.svg
                      with a repeatability option: wSD, RC, ICC(2,1) and Bland-Altman of the
                      two visits per method, reference and truth; the pairs; one panel each
report.html           one self-contained report with every table and figure
"""
