"""Index a folder of the user's own images for search (``aladin-search index``).

- ``scan``: walk a folder / read a list of paths, fingerprint files, say why any is left out;
- ``encoder``: the pipeline's vision backbone + a trained student (+ teacher tokens), as a spec;
- ``engines``: in-process, or a Ray Data actor pool; the same chunks give the same shards;
- ``shards``: atomic shard / manifest writes, resumable after a kill;
- ``build``: the faiss index chosen for the size under a memory budget, memory-mapped at search;
- ``indexer``: the incremental run that ties them together.
"""
