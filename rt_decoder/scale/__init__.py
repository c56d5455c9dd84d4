"""Offline reconstruction and ensemble training beyond one machine, on Ray.

::

    rt-decoder reconstruct --model M --data D --out O --threads 1 --ray          # a local Ray instance
    rt-decoder reconstruct --model M --data D --out O --threads 1 --ray auto     # the cluster of `ray start`
    rt-decoder train --data D --out M --ensemble 7 --threads 1 --ray HOST:6379

Units of work: one (trial, ensemble member) for reconstruction (:mod:`.recon`), one member
for training (:mod:`.train`). Each task calls the function the local command calls, with
the same seeds and thread count, so videos, metrics and weights are the local run's; Ray
re-runs a task whose worker or node died (``max_retries``); the driver alone writes the
outputs, each file through a temporary name and a rename; one progress bar counts all
tasks' iterations (epochs) with each worker's throughput.

Ray is an optional extra (``pip install 'rt-decoder[scale]'``) imported only when a
``--ray`` run starts; importing this package does not need it. Every node needs the
same rt-decoder installed. Nothing read from a file or socket is unpickled: models travel
as the bytes of their files and are loaded by the manifest loader on the worker, data as
numpy buffers.
"""

from __future__ import annotations

from rt_decoder.scale._ray import INSTALL_HINT, RaySettings, require_ray

__all__ = ["INSTALL_HINT", "RaySettings", "require_ray"]
