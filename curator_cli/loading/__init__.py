"""From ``--stage``/``--stage-arg`` to stage objects, the ``curator stages`` catalog, and a
stage's identity for resume."""
