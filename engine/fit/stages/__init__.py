"""The six steps of the fit, one module each (``pipeline.py`` runs them in order):
``detect`` -> ``coarse`` -> ``unwrap`` -> ``fine`` -> ``albedo`` -> ``write``.
Each is a function taking and returning dataclasses; none keeps state between calls."""
