"""The layout of checkpoints on storage, and the one owner of its names.

Which object names a directory holds (``ckpt-N/manifest.json``, attempt data
prefixes, ownership claims, the ``checkpoint`` state file), how a checkpoint
is written and committed (``checkpoint_io``), listed (``catalog``),
classified — latest, fenced, abandoned (``directory``) — and who owns the
directory (``ownership``).
"""
