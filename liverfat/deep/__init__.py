"""liverfat.deep

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it
(only effective when torch is not imported yet). With OpenMP's default spinning wait policy, a
torch process with 2 threads on 2 cores shared with other work slows down several-fold: training
the small CNN at input scale 0.25 on a busy 2-core machine ran at 4 iterations/s with spinning
threads against 19 with passive ones.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
