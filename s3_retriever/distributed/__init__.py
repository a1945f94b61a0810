"""Scale out past one machine: scan a corpus on a Ray cluster and search a sharded index.

The core never imports Ray: only :mod:`s3_retriever.distributed.scan` and
:mod:`s3_retriever.distributed.serve` do, when called (``pip install "s3-retriever[ray]"``).
A sharded index is searched in one process with :class:`ShardedIndex` (no Ray needed) or
served by one Ray actor per shard with :func:`serve_sharded`.
"""

from s3_retriever.distributed.manifest import is_sharded_index, read_manifest, write_manifest
from s3_retriever.distributed.merge import merge_shards
from s3_retriever.distributed.scan import index_corpus
from s3_retriever.distributed.serve import serve_sharded
from s3_retriever.distributed.shards import ShardedIndex, save_sharded, split_index
from s3_retriever.errors import ScanError, ShardUnavailableError

__all__ = ["ScanError", "ShardUnavailableError", "ShardedIndex", "index_corpus",
           "is_sharded_index", "merge_shards", "read_manifest", "save_sharded", "serve_sharded",
           "split_index", "write_manifest"]
