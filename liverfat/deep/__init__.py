"""liverfat.deep

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it
(see :func:`liverfat.nn.prefer_passive_openmp`; only effective when torch is not imported yet).
"""

from liverfat.nn import prefer_passive_openmp

prefer_passive_openmp()
