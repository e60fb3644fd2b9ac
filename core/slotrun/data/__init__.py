"""slotrun's data layer: built-in synthetic scenes, webdataset shards, and deterministic batch loading.

Modules: shapes (the scene generator), shards (tar shards + index.json), loader (Batch streams), sources (the
registered "shapes" and "shards" datasets), cli (`slotrun data ...`), plugin (registration).
"""
