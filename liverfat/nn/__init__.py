"""liverfat.nn: the torch floor shared by the network engines (``deep``, ``segmentation``) and
the atlas engine's torch backend. Engines import from here, never from each other.

- :mod:`liverfat.nn.device`: device choice, mixed precision, channels-last memory, torch threads;
- :mod:`liverfat.nn.weights`: local state-dict files (safetensors or ``weights_only`` torch);
- :mod:`liverfat.nn.registry`: named network factories per task, entry-point plug-ins included;
- :mod:`liverfat.nn.architectures`: the built-in 2D CNNs (MONAI ResNet / DenseNet, a small CNN).

Importing this package does not import torch, so :func:`prefer_passive_openmp` can run before
torch loads.
"""

import os


def prefer_passive_openmp() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it.

    Only effective when torch is not imported yet, so an engine package calls it on import. With
    OpenMP's default spinning wait policy, a torch process with 2 threads on 2 cores shared with
    other work slows down several-fold: training the small CNN at input scale 0.25 on a busy
    2-core machine ran at 4 iterations/s with spinning threads against 19 with passive ones.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
