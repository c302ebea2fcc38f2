"""The layout of checkpoints on storage: the one owner of its names and of their life.

``names`` spells and parses every object name (checkpoint directories,
manifest, preserved marker, attempt data prefixes, ownership keys, state
file); ``checkpoint_io`` writes and reads one checkpoint; ``commit`` makes
one visible or invisible (commit, uncommit-and-delete, preserve, orphan
collection); ``catalog`` lists a directory, ``directory`` classifies it
(latest, fenced, abandoned), ``ownership`` holds the claims, ``statefile``
the TF-style state file; ``handle`` is the manager's door to all of it.
"""
