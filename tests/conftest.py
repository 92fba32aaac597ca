"""Test-session settings.

PyTorch's idle OpenMP workers busy-wait and slow the face detector (yuface, also OpenMP) many times over
on a 2-core machine. The CLI sets ``OMP_WAIT_POLICY=PASSIVE`` in ``main()``; tests that call the library
in-process need the same before torch is first imported, which is why it is set here, at collection time.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
