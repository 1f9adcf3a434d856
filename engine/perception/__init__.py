"""Face detection, landmarks and their correspondence onto the face model.

Kept free of imports: ``landmarks`` is torch-free, ``correspondence`` needs torch only for
``model_points``.
"""
