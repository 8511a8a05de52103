"""Fidelity studies (``python -m runs study ...``): measurements of how well an estimator or a precision
setting reproduces the exact quantity, apart from the speed / memory benches of :mod:`runs.bench`.

- :mod:`runs.studies.align` (``study align``): alignment of MoZO's vision update with the true gradient
  under each reading of the vision constraint;
- :mod:`runs.studies.zo_precision` (``study zo-precision``): ZO probes under low precision against the
  exact directional derivative.
"""
