"""One module per backend: local disk, any fsspec filesystem, and the fsspec ones that specialise it
(memory://, S3, GCS). :data:`cloudckpt.storage.opener.BACKENDS` says which serves a URL scheme.

Example:
    >>> from cloudckpt.storage.backends.local import LocalBackend
    >>> LocalBackend.name
    'local'
"""
