"""``curator dedup``: near-duplicate groups from embedding parquet files, one module per step.

read (``inputs``) -> partition (``partition``: faiss k-means cells, each vector's home cell and the
neighbouring cells it lies near) -> spill to disk by cell (``spill``) -> exact pairs per cell
(``pairs``: torch matmul, every reported pair verified in float32) -> connected components
(``components``: union-find) -> one image kept per group (``keep``) -> ``duplicates.parquet`` and
``keep.parquet`` (``write``). ``workdir`` keeps what a rerun reuses; ``pipeline`` runs the steps.

This layer sits above ``io`` (it reads parquet and commits files the way ``io.commit`` does) and
below ``cli``; it never imports ``decode`` or ``execution``.
"""
