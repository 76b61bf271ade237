"""A symbolic pickle interpreter for ``torch.save`` checkpoints: reads opcodes, executes nothing.

`pickle.load` (and `torch.load`, even with ``weights_only``) imports modules and calls objects the
file names; a hostile checkpoint uses that to run code. This interpreter implements the opcodes
``torch.save`` emits (protocols 2–5; see `pickletools`) over a stack of *symbols*: a ``GLOBAL`` is
looked up in an allow-list and becomes a marker, never an import; ``REDUCE`` of an allowed rebuild
function builds a `TensorRef` record; ``BINPERSID`` storage ids become `StorageRef` records. Any
other global raises `UnsupportedFormat` naming it, before anything else happens — so a file that
would call ``os.system`` is refused, and the message is the evidence.

Allow-list: ``collections.OrderedDict``; ``torch._utils._rebuild_tensor``/``_rebuild_tensor_v2``/
``_rebuild_parameter``/``_rebuild_parameter_with_state``; ``torch._tensor._rebuild_from_type_v2``
with ``torch.Tensor``/``torch.nn.parameter.Parameter``; ``torch.*Storage``; torch dtypes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from monitor.errors import FormatError, UnsupportedFormat

__all__ = [
    "MAX_MEMO",
    "MAX_OPS",
    "MAX_PICKLE_BYTES",
    "MAX_STACK",
    "STORAGE_DTYPES",
    "TORCH_DTYPES",
    "StorageRef",
    "Symbol",
    "TensorRef",
    "interpret",
]

MAX_PICKLE_BYTES = 16 * 1024 * 1024
"""Largest ``data.pkl`` interpreted (a 70B checkpoint's is well under 1 MB)."""
MAX_OPS = 5_000_000
"""Most opcodes executed."""
MAX_MEMO = 1_000_000
"""Most memo entries."""
MAX_STACK = 1_000_000
"""Deepest value stack (counting marks)."""
MAX_DIMS = 16

STORAGE_DTYPES: dict[str, str | None] = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "UntypedStorage": "U8",
    "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2",
    "ComplexFloatStorage": None,
    "ComplexDoubleStorage": None,
    "QInt8Storage": None,
    "QUInt8Storage": None,
    "QInt32Storage": None,
    "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}
"""``torch.<name>`` storage classes and the dtype of their elements (``None``: recognised, unreadable)."""

TORCH_DTYPES: dict[str, str | None] = {
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": None,
    "complex128": None,
}
"""``torch.<name>`` dtype objects and their storage type names."""

_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
}
_TENSOR_CLASSES = {("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch.nn", "Parameter")}


@dataclass(frozen=True)
class Symbol:
    """An allow-listed global, recorded by name only.

    Attributes:
        module (`str`), name (`str`): as written in the pickle.
        kind (`str`): ``dict``, ``rebuild``, ``storage``, ``dtype`` or ``tensor_class``.
    """

    module: str
    name: str
    kind: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class StorageRef:
    """A storage named by a persistent id ``('storage', type, key, location, numel)``.

    Attributes:
        key (`str`): archive member ``data/<key>``.
        dtype (`str | None`): element type (``None`` when torch-specific and unreadable).
        type_name (`str`): the storage class (``FloatStorage``...).
        location (`str`): device it was saved from.
        numel (`int`): elements.
    """

    key: str
    dtype: str | None
    type_name: str
    location: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor as ``_rebuild_tensor_v2`` would build it.

    Attributes:
        storage (`StorageRef`), offset (`int`): storage and element offset into it.
        size (`tuple[int, ...]`), stride (`tuple[int, ...]`): shape and strides in elements.
    """

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Mark:
    __slots__ = ()


_MARK = _Mark()


def _allowed(module: str, name: str, path: str) -> Symbol:
    if (module, name) == ("collections", "OrderedDict"):
        return Symbol(module, name, "dict")
    if (module, name) in _REBUILDERS:
        return Symbol(module, name, "rebuild")
    if (module, name) in _TENSOR_CLASSES:
        return Symbol(module, name, "tensor_class")
    if module == "torch" and name in STORAGE_DTYPES:
        return Symbol(module, name, "storage")
    if module == "torch" and name in TORCH_DTYPES:
        return Symbol(module, name, "dtype")
    raise UnsupportedFormat(
        f"{path}: pickle references global {module[:100]}.{name[:100]}, which is not on the allow-list "
        "of PyTorch checkpoint globals; refusing to interpret it (nothing was executed)"
    )


def _as_int(v: object, what: str, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"{path}: {what} must be an integer")
    return v


def _int_tuple(v: object, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(v, tuple) or len(v) > MAX_DIMS:
        raise FormatError(f"{path}: {what} must be a tuple of at most {MAX_DIMS} integers")
    return tuple(_as_int(x, what, path) for x in v)


def _rebuild(sym: Symbol, args: tuple, path: str) -> object:
    name = sym.name
    if name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        if len(args) < 4 or not isinstance(args[0], StorageRef):
            raise FormatError(f"{path}: {sym.qualname} called without (storage, offset, size, stride)")
        offset = _as_int(args[1], "storage offset", path)
        size = _int_tuple(args[2], "tensor size", path)
        stride = _int_tuple(args[3], "tensor stride", path)
        if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size):
            raise FormatError(f"{path}: inconsistent tensor size {size}, stride {stride}, offset {offset}")
        return TensorRef(args[0], offset, size, stride)
    if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        if not args or not isinstance(args[0], TensorRef):
            raise FormatError(f"{path}: {sym.qualname} called without a tensor")
        return args[0]
    # _rebuild_from_type_v2(func, new_type, args, state)
    if (
        len(args) != 4
        or not isinstance(args[0], Symbol)
        or args[0].kind != "rebuild"
        or not isinstance(args[1], Symbol)
        or args[1].kind != "tensor_class"
        or not isinstance(args[2], tuple)
    ):
        raise FormatError(f"{path}: unexpected arguments to {sym.qualname}")
    return _rebuild(args[0], args[2], path)


def _call(func: object, args: object, path: str) -> object:
    if not isinstance(func, Symbol):
        raise FormatError(f"{path}: REDUCE of a non-callable value {type(func).__name__}")
    if not isinstance(args, tuple):
        raise FormatError(f"{path}: REDUCE arguments must be a tuple")
    if func.kind == "dict":
        out: dict = {}
        if args:
            if len(args) != 1 or not isinstance(args[0], list):
                raise FormatError(f"{path}: unexpected OrderedDict arguments")
            for pair in args[0]:
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    raise FormatError(f"{path}: OrderedDict items must be pairs")
                out[pair[0]] = pair[1]
        return out
    if func.kind == "rebuild":
        return _rebuild(func, args, path)
    raise FormatError(f"{path}: {func.qualname} is not callable in a checkpoint")


def _persistent(pid: object, path: str) -> StorageRef:
    if (
        not isinstance(pid, tuple)
        or len(pid) != 5
        or pid[0] != "storage"
        or not isinstance(pid[1], Symbol)
        or pid[1].kind != "storage"
    ):
        raise FormatError(f"{path}: unsupported persistent id {str(pid)[:120]}")
    _, stype, key, location, numel = pid
    if not isinstance(key, str) or not isinstance(location, str):
        raise FormatError(f"{path}: storage key and location must be strings")
    return StorageRef(
        key, STORAGE_DTYPES[stype.name], stype.name, location, _as_int(numel, "storage numel", path)
    )


class _Machine:
    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.pos = 0
        self.path = path
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"{self.path}: pickle truncated at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (v,) = struct.unpack(fmt, self.take(size))
        return int(v)

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 4096)
        if end < 0:
            raise FormatError(f"{self.path}: unterminated GLOBAL name at byte {self.pos}")
        text = self.data[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return text

    def push(self, v: object) -> None:
        if len(self.stack) >= MAX_STACK:
            raise FormatError(f"{self.path}: pickle stack deeper than {MAX_STACK}")
        self.stack.append(v)

    def pop(self) -> object:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise FormatError(f"{self.path}: pickle stack underflow at byte {self.pos}")
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        if not self.marks:
            raise FormatError(f"{self.path}: pickle has no MARK to pop at byte {self.pos}")
        k = self.marks.pop()
        items = self.stack[k:]
        del self.stack[k:]
        return items

    def top(self) -> object:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise FormatError(f"{self.path}: pickle stack underflow at byte {self.pos}")
        return self.stack[-1]

    def memo_put(self, idx: int) -> None:
        if len(self.memo) >= MAX_MEMO and idx not in self.memo:
            raise FormatError(f"{self.path}: pickle memo larger than {MAX_MEMO}")
        self.memo[idx] = self.top()

    def memo_get(self, idx: int) -> None:
        if idx not in self.memo:
            raise FormatError(f"{self.path}: pickle reads memo slot {idx} that was never written")
        self.push(self.memo[idx])

    def set_items(self, target: object, items: list[object]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise FormatError(f"{self.path}: SETITEMS on a non-dict or with an odd item count")
        for k, v in zip(items[0::2], items[1::2], strict=True):
            try:
                target[k] = v
            except TypeError:
                raise FormatError(f"{self.path}: unhashable dict key {type(k).__name__}") from None

    def run(self) -> object:
        ops = 0
        while True:
            ops += 1
            if ops > MAX_OPS:
                raise FormatError(f"{self.path}: pickle longer than {MAX_OPS} opcodes")
            op = self.take(1)
            if op == b"\x80":  # PROTO
                proto = self.take(1)[0]
                if proto > 5:
                    raise FormatError(f"{self.path}: unknown pickle protocol {proto}")
            elif op == b"\x95":  # FRAME
                self.take(8)
            elif op == b".":  # STOP
                return self.pop()
            elif op == b"(":  # MARK
                self.marks.append(len(self.stack))
            elif op == b"0":  # POP
                self.pop()
            elif op == b"1":  # POP_MARK
                self.pop_mark()
            elif op == b"2":  # DUP
                self.push(self.top())
            elif op == b"N":
                self.push(None)
            elif op == b"\x88":
                self.push(True)
            elif op == b"\x89":
                self.push(False)
            elif op == b"J":  # BININT
                self.push(self.unpack("<i"))
            elif op == b"K":  # BININT1
                self.push(self.unpack("<B"))
            elif op == b"M":  # BININT2
                self.push(self.unpack("<H"))
            elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
                n = self.unpack("<B") if op == b"\x8a" else self.unpack("<i")
                if n > 64:
                    raise FormatError(f"{self.path}: integer of {n} bytes is not a checkpoint value")
                self.push(int.from_bytes(self.take(n), "little", signed=True))
            elif op == b"G":  # BINFLOAT
                self.push(struct.unpack(">d", self.take(8))[0])
            elif op in (b"X", b"\x8c", b"\x8d"):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                n = self.unpack({b"X": "<I", b"\x8c": "<B", b"\x8d": "<Q"}[op])
                self.push(self.take(n).decode("utf-8", errors="replace"))
            elif op in (b"T", b"U"):  # BINSTRING, SHORT_BINSTRING (Python 2 str)
                n = self.unpack("<i" if op == b"T" else "<B")
                self.push(self.take(n).decode("latin-1"))
            elif op in (b"B", b"C", b"\x8e", b"\x96"):  # BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                n = self.unpack({b"B": "<I", b"C": "<B", b"\x8e": "<Q", b"\x96": "<Q"}[op])
                self.push(self.take(n))
            elif op == b")":
                self.push(())
            elif op == b"t":
                self.push(tuple(self.pop_mark()))
            elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
                n = op[0] - 0x84
                items = [self.pop() for _ in range(n)]
                self.push(tuple(reversed(items)))
            elif op == b"]":
                self.push([])
            elif op == b"l":
                self.push(self.pop_mark())
            elif op == b"a":  # APPEND
                v = self.pop()
                target = self.top()
                if not isinstance(target, list):
                    raise FormatError(f"{self.path}: APPEND to a non-list")
                target.append(v)
            elif op == b"e":  # APPENDS
                items = self.pop_mark()
                target = self.top()
                if not isinstance(target, list):
                    raise FormatError(f"{self.path}: APPENDS to a non-list")
                target.extend(items)
            elif op == b"}":
                self.push({})
            elif op == b"d":  # DICT
                items = self.pop_mark()
                d: dict = {}
                self.set_items(d, items)
                self.push(d)
            elif op == b"s":  # SETITEM
                v = self.pop()
                k = self.pop()
                self.set_items(self.top(), [k, v])
            elif op == b"u":  # SETITEMS
                items = self.pop_mark()
                self.set_items(self.top(), items)
            elif op == b"\x8f":  # EMPTY_SET (kept as a list: sets are not checkpoint data)
                self.push([])
            elif op == b"\x90":  # ADDITEMS
                items = self.pop_mark()
                target = self.top()
                if not isinstance(target, list):
                    raise FormatError(f"{self.path}: ADDITEMS to a non-set")
                target.extend(items)
            elif op == b"\x91":  # FROZENSET
                self.push(tuple(self.pop_mark()))
            elif op == b"c":  # GLOBAL
                module = self.line()
                name = self.line()
                self.push(_allowed(module, name, self.path))
            elif op == b"\x93":  # STACK_GLOBAL
                qual = self.pop()
                mod = self.pop()
                if not isinstance(mod, str) or not isinstance(qual, str):
                    raise FormatError(f"{self.path}: STACK_GLOBAL needs two strings")
                self.push(_allowed(mod, qual, self.path))
            elif op == b"R":  # REDUCE
                args = self.pop()
                func = self.pop()
                self.push(_call(func, args, self.path))
            elif op == b"\x81":  # NEWOBJ
                args = self.pop()
                cls = self.pop()
                if not isinstance(cls, Symbol) or cls.kind != "dict":
                    raise FormatError(
                        f"{self.path}: NEWOBJ of {getattr(cls, 'qualname', type(cls).__name__)}"
                    )
                self.push(_call(cls, args, self.path))
            elif op == b"b":  # BUILD: state of dicts/tensors (e.g. state_dict._metadata) is dropped
                self.pop()
                target = self.top()
                if not isinstance(target, dict | TensorRef):
                    raise FormatError(f"{self.path}: BUILD on {type(target).__name__}")
            elif op == b"Q":  # BINPERSID
                self.push(_persistent(self.pop(), self.path))
            elif op == b"q":  # BINPUT
                self.memo_put(self.unpack("<B"))
            elif op == b"r":  # LONG_BINPUT
                self.memo_put(self.unpack("<I"))
            elif op == b"\x94":  # MEMOIZE
                self.memo_put(len(self.memo))
            elif op == b"h":  # BINGET
                self.memo_get(self.unpack("<B"))
            elif op == b"j":  # LONG_BINGET
                self.memo_get(self.unpack("<I"))
            else:
                raise FormatError(
                    f"{self.path}: pickle opcode {op!r} at byte {self.pos - 1} is not "
                    "used by torch.save and is not interpreted"
                )


def interpret(data: bytes, *, path: str) -> object:
    """Interpret a ``torch.save`` pickle symbolically.

    Args:
        data (`bytes`): the pickle (``<archive>/data.pkl``).
        path (`str`): names the file in messages.

    Returns:
        The unpickled structure with dicts, lists, tuples, scalars, `TensorRef` and `Symbol` values.

    Raises:
        `UnsupportedFormat`: a global outside the allow-list (named in the message).
        `FormatError`: malformed pickle, limits exceeded, or an opcode torch.save never emits.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise FormatError(f"{path}: pickle of {len(data)} bytes exceeds the limit of {MAX_PICKLE_BYTES}")
    return _Machine(data, path).run()
