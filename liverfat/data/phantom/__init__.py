"""The built-in synthetic cohort: two-point Dixon neck-to-knee scans with known ground truth.

Each subject is drawn from a seeded generator and painted on the UK Biobank body-MRI grid
(full scale: 224 left-right x 174 anterior-posterior x 370 head-feet voxels of 2.23 x 2.23 x 3 mm;
``half`` and ``quarter`` halve and quarter the voxel counts over the same field of view). The
anatomy is defined continuously in millimetres, so one seed gives the same body at every scale.

Array order is (z, y, x) with an identity direction: +x is the patient's left, +y posterior and +z
superior (LPS), so the liver sits at negative x, and z = 0 is the knee end of the scan.

The rooms:

* :mod:`~liverfat.data.phantom.grid` -- the voxel grid in mm and smooth random fields;
* :mod:`~liverfat.data.phantom.anatomy` -- body, organs, liver and vessels as a label map;
* :mod:`~liverfat.data.phantom.imaging` -- the imaging model (:class:`PhantomConfig`): Dixon
  signal with a designed fat-fraction bias, Rician noise, coil field, partial-volume blur,
  station motion, water-fat swaps, and the simulated reference;
* :mod:`~liverfat.data.phantom.cohort` -- subject draws, splits, and writing the cohort (images,
  manifest, truth), resumable;
* :mod:`~liverfat.data.phantom.visits` -- repeat visits: who gets a second scan, its id
  (``P0007_v3``), its new table position and optional true change of liver fat.

The truth table (``truth/truth.csv``) is written apart from the manifest; no engine reads it.
"""

from liverfat.data.phantom.anatomy import LABELS, LIVER_LABELS
from liverfat.data.phantom.cohort import build_subject, dataset_card, draw_subject, generate_cohort
from liverfat.data.phantom.grid import Grid
from liverfat.data.phantom.imaging import PhantomConfig, simulate_reference

__all__ = [
    "LABELS",
    "LIVER_LABELS",
    "Grid",
    "PhantomConfig",
    "build_subject",
    "dataset_card",
    "draw_subject",
    "generate_cohort",
    "simulate_reference",
]
