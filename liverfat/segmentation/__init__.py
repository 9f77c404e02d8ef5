"""liverfat.segmentation: 2.5D U-Net liver segmentation with a volume and fat-fraction readout.

- :mod:`~liverfat.segmentation.slices`: volumes to network slices and back;
- :mod:`~liverfat.segmentation.networks`: the MONAI U-Nets, registered as segmentation models;
- :mod:`~liverfat.segmentation.training`: batches, augmentation, the training loop;
- :mod:`~liverfat.segmentation.readout`: mask post-processing, volume and fat fraction;
- :mod:`~liverfat.segmentation.subjects`: per-subject work of the engine;
- :mod:`~liverfat.segmentation.engine`: :class:`SegmentationEngine`.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it
(see :func:`liverfat.nn.prefer_passive_openmp`); it imports no torch (the command line is built
without it). The built-in networks are registered when :mod:`~.networks` is imported (the
engine does).
"""

from liverfat.nn import prefer_passive_openmp

prefer_passive_openmp()
