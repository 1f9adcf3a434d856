"""``python -m engine batch``: fit every photo of a folder, one result folder each (docs/batch.md).

``plan.py`` finds the photos, names their result folders and reads/writes the manifest;
``local.py`` runs the fits in worker processes on this machine, ``ray_run.py`` on a Ray cluster;
``cli.py`` is the command line. The fits themselves are ``engine.fit.session.FitSession``'s.
"""
