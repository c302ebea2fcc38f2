"""The manifest's JSON, as types: the one statement of its structure.

Every object of ``manifest.json`` is a ``TypedDict`` here; constraints and
descriptions ride along in ``Annotated`` metadata (:class:`S`), and a type
named in :data:`DEFS` is a named definition of the schema. The JSON Schema
``manifest.schema.json`` (and its copy in docs/format.md) is generated from
these types by :mod:`cloudckpt.format.schema`; the typed records of
:mod:`cloudckpt.format.records` encode to them. The reader's checks
(:mod:`cloudckpt.format.manifest`) add what a schema cannot express.

A TypedDict's docstring is its description in the schema; a TypedDict is
closed (no other fields) unless it is in :data:`OPEN`.

Example:
    >>> sorted(ObjectEntry.__required_keys__)
    ['crc32c', 'key', 'size']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from cloudckpt.format.dtypes import ML_DTYPE_NAMES

__all__ = ["Def", "S", "Manifest", "ArrayJson", "ObjectEntry", "Node", "DEFS", "OPEN", "EXACTLY_ONE_OF", "FORMAT_VERSIONS", "MAX_SIZE"]

MAX_SIZE = 1 << 56  # the largest byte count, offset or element count a manifest may hold
FORMAT_VERSIONS = (1, 2, 3)  # the format versions this library reads (the newest last)


@dataclass(frozen=True)
class Def:
    """Marks a type as the named definition ``$defs/<name>`` of the schema (the first metadata of its ``Annotated``).

    Example:
        >>> Def("size").name
        'size'
    """

    name: str


class S:
    """Schema keywords for the type they annotate (``description`` first in the output).

    Example:
        >>> S("a count", minimum=0).keywords
        {'description': 'a count', 'minimum': 0}
    """

    __slots__ = ("description", "extra")

    def __init__(self, description: str | None = None, **keywords: Any) -> None:
        self.description = description
        self.extra = keywords

    @property
    def keywords(self) -> dict[str, Any]:
        """The keywords as the schema states them (see the class example)."""
        head = {"description": self.description} if self.description else {}
        return {**head, **self.extra}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S) and self.keywords == other.keywords

    def __hash__(self) -> int:  # (typing hashes the metadata of Annotated types)
        return hash(repr(self.keywords))


# -- scalars -------------------------------------------------------------------

Size = Annotated[int, Def("size"), S("A byte count, offset or element count.", minimum=0, maximum=MAX_SIZE)]
Crc32c = Annotated[int, Def("crc32c"), S("CRC-32C (Castagnoli) as an unsigned 32-bit integer.", minimum=0, maximum=0xFFFFFFFF)]
Key = Annotated[
    str,
    Def("key"),
    S(
        "A relative '/'-separated storage key: no empty, '.' or '..' component, no leading '/', no backslash, no NUL.",
        pattern="^(?:(?!\\.\\.?(?:/|$))[^/\\\\\\u0000]+)(?:/(?!\\.\\.?(?:/|$))[^/\\\\\\u0000]+)*$",
    ),
]
Range = Annotated[
    tuple[Size, Size], Def("range"), S("A half-open range [start, stop) of indices into 'objects'.", minItems=2, maxItems=2)
]
Dtype = Annotated[
    str,
    Def("dtype"),
    S(
        "numpy's dtype.str for numpy's own types, or the ml_dtypes name.",
        maxLength=32,
        anyOf=[
            {"enum": list(ML_DTYPE_NAMES)},
            {"pattern": "^[<>|](?:[biufc][0-9]{1,2}|[mM]8(?:\\[[0-9]*[a-zA-Z]{1,2}\\])?|[SU][0-9]{1,9})$"},
        ],
    ),
]
ChunkShape = Annotated[
    list[Annotated[int, S(minimum=1, exclusiveMaximum=MAX_SIZE)]],
    Def("chunk_shape"),
    S(
        "The shape of every chunk of a stored array (edge chunks are padded to it), one entry per axis of the stored array.",
        maxItems=65,
    ),
]
Position = Annotated[
    list[Annotated[int, S(minimum=0, maximum=MAX_SIZE)]],
    Def("position"),
    S(
        "A commit position: [managed (1) or not (0), ownership epoch, sequence of the commit within the epoch "
        "(or the number of a checkpoint written without a manager)].",
        minItems=3,
        maxItems=3,
        prefixItems=[{"enum": [0, 1]}],
    ),
]
_Axis = Annotated[int, S(minimum=0, maximum=64)]
_Index = Annotated[int, S(minimum=0, exclusiveMaximum=MAX_SIZE)]
_Ref = Annotated[int, S(minimum=0)]

# -- array records -------------------------------------------------------------


class PackedJson(TypedDict):
    """Stored in the pack at byte 'offset' (little-endian bytes); crc32c of those nbytes bytes."""

    offset: Size
    crc32c: Crc32c


class ChunkedJson(TypedDict):
    """Stored as its own zarr array at node 'path' of the data group, in chunks of 'chunk_shape' (of the stored array) on zarr's regular grid; its chunk objects are objects[start:stop], in C order of the chunk grid. An integer 'axis' is a contiguous split along that axis (chunk_shape is 1 before it and whole after it). Format version 3: a null 'axis' is any regular grid (a sharded array: every chunk lies inside one shard)."""

    path: Key
    chunk_shape: ChunkShape
    axis: _Axis | None
    objects: Range


class ShardJson(TypedDict):
    """Format version 3: one shard of a sharded array, the box of 'shape' at 'offset' of the array, stored as its own zarr array at node 'path' (cloudckpt writes '<node>/_s<k>') split along 'axis' into chunks of 'chunk_shape', like a version-1 'chunked' record; its chunk objects are objects[start:stop]."""

    path: Key
    offset: Annotated[list[_Index], S("Index of the shard's first element in the array.", maxItems=64)]
    shape: Annotated[
        list[Annotated[int, S(minimum=1, exclusiveMaximum=MAX_SIZE)]], S("The shard's shape (no empty shards).", maxItems=64)
    ]
    chunk_shape: ChunkShape
    axis: _Axis
    objects: Range


class ArrayJson(TypedDict):
    """One array leaf: its logical dtype and shape, and where its bytes are (exactly one of 'packed', 'chunked' and, in format version 3, 'shards')."""

    dtype: Dtype
    shape: Annotated[list[_Index], S(maxItems=64)]
    nbytes: Size
    packed: NotRequired[PackedJson]
    chunked: NotRequired[ChunkedJson]
    shards: NotRequired[
        Annotated[
            list[ShardJson],
            S(
                "Format version 3: a sharded array whose shards form no regular grid, stored as one zarr array per shard. "
                "The shards partition the array exactly (they lie inside it, do not overlap and cover it).",
                minItems=1,
            ),
        ]
    ]


class PackJson(TypedDict):
    path: Annotated[Literal["_pack"], S("Node path of the pack array in the data group.")]
    nbytes: Annotated[Size, S("Bytes of packed tensor data (the pack array may be longer: its last chunk is padded).")]
    chunk_bytes: Annotated[int, S("Size of every pack chunk object.", minimum=1, maximum=MAX_SIZE)]
    objects: Annotated[Range, S("The pack's chunk objects: objects[start:stop].")]


class ObjectEntry(TypedDict):
    """One stored object: its key relative to the checkpoint directory, its size in bytes and the crc32c of all its bytes."""

    key: Key
    size: Size
    crc32c: Crc32c


class ContentHashes(TypedDict):
    """The content hash of every object: by it a later save of the same store copies an object the checkpoint already
    holds instead of sending it, and a copy sends only what the destination lacks. Informational: a reader needs none of
    it (the crc32c in 'objects' protects the bytes), and one that does not know the algorithm, or finds a list that does
    not match 'objects', ignores it. Absent in manifests of earlier releases."""

    algorithm: Annotated[str, S("The hash function: 'xxh3-128' (XXH3 with 128-bit output) in this release.", maxLength=64)]
    objects: Annotated[
        list[Annotated[str, S(maxLength=256)]],
        S("One per entry of 'objects', in the same order: the hash of all the object's bytes (xxh3-128: 32 lowercase hex digits)."),
    ]


# -- the tree ------------------------------------------------------------------


class DictNode(TypedDict):
    """A dict: keys 'k' (str, or int for int keys, in insertion order) and values 'v', of equal length; keys unique per type."""

    t: Literal["dict"]
    k: list[str | int]
    v: list[Node]


class ListNode(TypedDict):
    t: Literal["list"]
    v: list[Node]


class NamedTupleJson(TypedDict):
    name: Annotated[str, S(minLength=1, maxLength=1024)]
    fields: list[Annotated[str, S(minLength=1, maxLength=1024)]]


class TupleNode(TypedDict):
    """A tuple. Version 2: a NamedTuple also has 'namedtuple', its class ('module.QualName') and field names (one per value), for information only; readers return a plain tuple."""

    t: Literal["tuple"]
    v: list[Node]
    namedtuple: NotRequired[NamedTupleJson]


class NoneNode(TypedDict):
    t: Literal["none"]


class BoolNode(TypedDict):
    t: Literal["bool"]
    v: bool


class IntNode(TypedDict):
    """An int: a JSON integer within [-2**53, 2**53], beyond that a decimal string, and beyond about 3600 decimal digits a Python hex string ('-0x1f')."""

    t: Literal["int"]
    v: Annotated[
        int | str,
        S(
            anyOf=[
                {"type": "integer", "minimum": -(2**53), "maximum": 2**53},
                {"type": "string", "maxLength": 4000, "pattern": "^-?[0-9]+$"},
                {"type": "string", "pattern": "^-?0x[0-9a-f]+$"},
            ]
        ),
    ]


class FloatNode(TypedDict):
    """A float as Python's float.hex(): bit-exact for every finite value, -0.0 and the infinities. A NaN is 'nan'; a NaN whose IEEE 754 bits differ from float('nan') (0x7ff8000000000000) also has 'bits', its 64 bits as 16 lower-case hex digits, which take precedence over 'v'."""

    t: Literal["float"]
    v: Annotated[str, S(maxLength=64, pattern="^(?:-?0x[01]\\.[0-9a-f]+p[+-][0-9]+|-?inf|nan)$")]
    bits: NotRequired[Annotated[str, S(pattern="^0x[0-9a-f]{16}$")]]


class StrNode(TypedDict):
    t: Literal["str"]
    v: str


class ArrayRef(TypedDict):
    """A numpy array leaf: index 'a' into 'arrays'."""

    t: Literal["array"]
    a: _Ref


class ScalarRef(TypedDict):
    """A numpy scalar leaf (np.float32(1)): stored as the 0-d array arrays[a], restored as a numpy scalar of the same type."""

    t: Literal["scalar"]
    a: _Ref


class AliasRef(TypedDict):
    """Format version 2: the same array as arrays[a] again (tensors that shared memory when saved, e.g. tied weights), stored once; readers return the same array object for both places."""

    t: Literal["alias"]
    a: _Ref


class PerRankNode(TypedDict):
    """Format version 3: a cloudckpt.PerRank value, one per rank of the job that saved it: r[k] is the value rank k saved (any node but another per_rank, at any depth). Arrays below it are stored as their own arrays (never packed) at node path '<path>/_r<k>/...'. A reader gives rank k PerRank of r[k], and a rank k >= len(r) a missing PerRank."""

    t: Literal["per_rank"]
    r: Annotated[list[Node], S(minItems=1, maxItems=1 << 20)]


# (the tree's node types are declared before Node: their own references to it resolve when the schema is made)
Node = Annotated[
    DictNode | ListNode | TupleNode | NoneNode | BoolNode | IntNode | FloatNode | StrNode | ArrayRef | ScalarRef | AliasRef | PerRankNode,
    Def("node"),
    S("A node of the state tree, told apart by 't'."),
]

# -- the manifest --------------------------------------------------------------


class Writer(TypedDict):
    """Who wrote the checkpoint. Open for additional fields (a manager records e.g. its retention clock here)."""

    library: Annotated[str, S("Name and version of the writing library, e.g. 'cloudckpt 0.1.0'.", minLength=1)]
    attempt: Annotated[str, S("Id of the save attempt; the data prefix is 'data-<attempt>'.", pattern="^[A-Za-z0-9._-]{1,123}$")]
    epoch: Annotated[
        int | None,
        S("Ownership epoch of the writing manager, or null for a save outside a manager.", minimum=0, exclusiveMaximum=MAX_SIZE),
    ]
    seq: NotRequired[
        Annotated[
            int,
            S(
                "The sequence of this commit among the commits of its ownership epoch (1, 2, ...); only beside an epoch.",
                minimum=1,
                exclusiveMaximum=MAX_SIZE,
            ),
        ]
    ]
    follows: NotRequired[
        Annotated[
            Position | None,
            S("The position of the checkpoint this save continues from (the previous save, or the restored checkpoint), or null."),
        ]
    ]
    abandoned: NotRequired[
        Annotated[
            Annotated[list[Annotated[list[Position], S(minItems=2, maxItems=2)]], S(maxItems=1000)] | None,
            S(
                "Ranges [after, upto] of positions (after < position <= upto) that a rollback left behind: never latest "
                "again. Null or absent when there are none."
            ),
        ]
    ]
    last_preserved_timestamp: NotRequired[
        Annotated[float, S("The manager's retention clock (keep_checkpoint_every_n_hours) at the save.")]
    ]


class Stored(TypedDict):
    """What the checkpoint stores: the number of objects (the manifest included) and the sum of the objects' sizes. Absent in manifests of the first release."""

    objects: Annotated[int, S(minimum=1)]
    bytes: Size


class Manifest(TypedDict):
    """The commit record of one cloudckpt checkpoint (manifest.json, written last and create-only). Forward compatibility: the top-level object and 'writer' allow additional fields; a reader ignores fields it does not know there, so a writer may add informational fields without changing the format version. Everywhere else, fields are closed. Constraints a schema cannot express (object keys lie under 'data', [start, stop) ranges and array references are in range, nbytes agrees with dtype and shape, chunk counts and sizes agree with the chunk layout, a chunked record with an integer 'axis' is a contiguous split along it, the shards of an array lie inside it and partition it exactly, dict keys are unique, the tree nests at most 500 levels, a float node with 'bits' has v = 'nan', an alias refers to an array that an array node references, per_rank nodes are not nested, alias nodes and 'namedtuple' fields need version 2 or later, per_rank nodes, chunked records with a null 'axis' and 'shards' records need version 3) are listed in docs/format.md and checked by every reader."""

    format: Annotated[Literal["cloudckpt"], S("Always the string 'cloudckpt'.")]
    format_version: Annotated[
        Literal[1, 2, 3],  # FORMAT_VERSIONS (tests/test_format_schema.py checks that they agree)
        S(
            "Version of the on-storage format, the oldest that holds the checkpoint: 3 if the tree has a 'per_rank' node "
            "or an array is stored as a sharded array (a 'chunked' record with a null 'axis', or a 'shards' record); else 2 "
            "if the tree has an 'alias' node (tied tensors stored once) or a tuple node with 'namedtuple'; else 1. This "
            "schema describes versions 1, 2 and 3."
        ),
    ]
    created: Annotated[float, S("Wall-clock time of the save, seconds since the Unix epoch.", minimum=0)]
    created_utc: Annotated[
        str,
        S("'created' as an ISO 8601 UTC timestamp, for humans.", pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"),
    ]
    writer: Writer
    checkpoint_number: Annotated[
        int | None,
        S("The checkpoint's number in its directory, or null for a save outside a manager.", minimum=0, exclusiveMaximum=MAX_SIZE),
    ]
    data: Annotated[
        str,
        S(
            "The data prefix: a plain directory name beside manifest.json holding the zarr v3 group of this attempt.",
            pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        ),
    ]
    nbytes: Annotated[Size, S("Sum of 'nbytes' over 'arrays' (logical bytes of all array leaves).")]
    metadata: Annotated[dict[str, Any], S("User metadata: any JSON object (no NaN or infinity).")]
    tree: Annotated[
        Node,
        S("The structure of the state: containers and non-array leaves as JSON nodes; array leaves refer to 'arrays' by index."),
    ]
    arrays: Annotated[
        list[ArrayJson],
        S(
            "One record per array leaf, in tree order (depth-first, keys in insertion order); the arrays of per_rank values "
            "(format version 3) come after all others, those of rank 0 first, then rank 1, ..."
        ),
    ]
    pack: Annotated[
        PackJson | None, S("The flat uint8 array holding every packed (small) tensor, or null when no tensor is packed.")
    ]
    objects: Annotated[
        list[ObjectEntry],
        S(
            "Every object of the checkpoint's data group except manifest.json: metadata documents first, then pack chunks, "
            "then array chunks in 'arrays' order (a sharded array's chunks in the order of its 'shards')."
        ),
    ]
    stored: NotRequired[Stored]
    content_hashes: NotRequired[ContentHashes]
    header_crc32c: NotRequired[
        Annotated[
            Crc32c,
            S(
                "The crc32c of the manifest's first line (its header: the fields from 'format' to 'metadata', section 7 "
                "of docs/format.md)."
            ),
        ]
    ]


#: The named definitions of the schema (``$defs``), in order: a type here is
#: written once and referred to by ``$ref`` everywhere it is used.
DEFS: dict[str, Any] = {
    "size": Size,
    "crc32c": Crc32c,
    "key": Key,
    "range": Range,
    "dtype": Dtype,
    "array": ArrayJson,
    "chunk_shape": ChunkShape,
    "shard": ShardJson,
    "pack": PackJson,
    "object": ObjectEntry,
    "content_hashes": ContentHashes,
    "node": Node,
    "dict": DictNode,
    "list": ListNode,
    "tuple": TupleNode,
    "none": NoneNode,
    "bool": BoolNode,
    "int": IntNode,
    "float": FloatNode,
    "str": StrNode,
    "array_ref": ArrayRef,
    "scalar_ref": ScalarRef,
    "alias_ref": AliasRef,
    "per_rank": PerRankNode,
    "position": Position,
}

#: The objects that allow fields beyond their own (forward compatibility).
OPEN = (Manifest, Writer, ContentHashes)

#: Objects that hold exactly one of some of their optional fields.
EXACTLY_ONE_OF: dict[Any, tuple[str, ...]] = {ArrayJson: ("packed", "chunked", "shards")}
