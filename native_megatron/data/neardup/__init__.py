"""Near and exact dedup in four stages over files on disk, the design datatrove uses for FineWeb.

1. :func:`write_signatures` / :func:`write_fingerprints` (per task): MinHash
   signatures, sorted per LSH band, and exact hashes; memory: the task's own documents.
2. :func:`merge_buckets` (per task, over band x hash-range units): a sorted merge of
   every task's files, streamed a window at a time, into duplicate pairs.
3. :func:`build_clusters` (one task): union-find over the pairs only; each group
   keeps its first document in input order.
4. :class:`Decisions` (per task): ``check(key)`` answers as ``Deduplicator.check`` does.

The answer does not depend on the number of tasks. Every unit is written
atomically and marked done, so any stage can be killed and rerun. See docs/dedup.md.
"""

from native_megatron.data.neardup.clusters import Decisions, build_clusters, components
from native_megatron.data.neardup.merge import merge_buckets, merge_part, plan_parts
from native_megatron.data.neardup.signatures import fingerprints, write_fingerprints, write_signatures
from native_megatron.data.neardup.store import Run, StagesConfig, make_key, split_key

__all__ = ["Decisions", "Run", "StagesConfig", "build_clusters", "components", "fingerprints", "make_key",
           "merge_buckets", "merge_part", "plan_parts", "split_key", "write_fingerprints", "write_signatures"]
