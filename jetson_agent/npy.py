"""NumPy ``.npy`` files, read and written with the standard library: the agent's format for the
input batches of evaluation jobs and the outputs it returns.

Only plain numeric arrays travel: a little-endian (or byte-order-free) integer, float or bool
dtype, C order, and data exactly as long as the shape says. Anything else, an object array above
all (whose data would be a pickle), is refused with :class:`NpyError` before a byte of data is
interpreted; nothing here ever unpickles. The header is a Python literal, read with
``ast.literal_eval`` (literals only, no names, no calls).

Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html (versions 1.0,
2.0 and 3.0 differ only in the header's length field and encoding).

Standard library only and valid on Python 3.6 (JetPack 4.6).
"""

import ast
import struct

MAGIC = b"\x93NUMPY"
# dtype descriptors accepted, with their item sizes: what an ONNX model takes or gives
# (backends.base.ELEM_TYPE_NAMES), little-endian; one-byte types have no byte order ("|").
DTYPES = {
    "<f4": ("float32", 4),
    "<f2": ("float16", 2),
    "<f8": ("float64", 8),
    "<i8": ("int64", 8),
    "<i4": ("int32", 4),
    "<i2": ("int16", 2),
    "|i1": ("int8", 1),
    "|u1": ("uint8", 1),
    "<u2": ("uint16", 2),
    "|b1": ("bool", 1),
}
_NAMES = dict((name, descr) for descr, (name, _size) in DTYPES.items())
_HEADER_KEYS = ["descr", "fortran_order", "shape"]
MAX_HEADER_BYTES = 64 * 1024
# numpy aligns the data to 64 bytes (format 1.0 used 16; both are read).
_ALIGN = 64


class NpyError(ValueError):
    """The bytes are not an ``.npy`` file the agent accepts; the message says what is wrong."""


class Npy(object):
    """A parsed ``.npy`` file: ``dtype`` (a name such as ``float32``), ``shape`` (a tuple) and
    ``data`` (the raw little-endian bytes, C order)."""

    def __init__(self, dtype, shape, data):
        self.dtype = dtype
        self.shape = tuple(shape)
        self.data = data

    @property
    def count(self):
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def to_numpy(self):
        """The array (needs numpy, which every backend that runs a model has)."""
        import numpy

        return numpy.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)


def _header(raw):
    if len(raw) < 10 or raw[:6] != MAGIC:
        raise NpyError("not an .npy file (it does not start with \\x93NUMPY)")
    major = raw[6]
    if major == 1:
        length, start, encoding = struct.unpack("<H", raw[8:10])[0], 10, "latin1"
    elif major in (2, 3):
        if len(raw) < 12:
            raise NpyError("the .npy file is truncated inside its header")
        length, start = struct.unpack("<I", raw[8:12])[0], 12
        encoding = "latin1" if major == 2 else "utf8"
    else:
        raise NpyError("unsupported .npy format version %d (1, 2 and 3 are read)" % major)
    if length > MAX_HEADER_BYTES:
        raise NpyError("the .npy header is %d bytes, more than %d" % (length, MAX_HEADER_BYTES))
    if len(raw) < start + length:
        raise NpyError("the .npy file is truncated inside its header")
    try:
        text = raw[start : start + length].decode(encoding)
        header = ast.literal_eval(text.strip())
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError):
        raise NpyError("the .npy header is not a Python literal dictionary") from None
    return header, start + length


def parse(raw):
    # type: (bytes) -> Npy
    """The array in ``raw`` (the whole file), checked; :class:`NpyError` otherwise."""
    header, offset = _header(bytes(raw))
    if not isinstance(header, dict) or sorted(header) != _HEADER_KEYS:
        raise NpyError("the .npy header must have exactly the keys descr, fortran_order, shape")
    descr = header["descr"]
    if not isinstance(descr, str):
        raise NpyError("the .npy dtype is a structured or nested type; send a plain numeric array")
    if descr.startswith("|O") or descr.startswith("O") or descr == "object":
        raise NpyError("object arrays (pickles) are refused; send a numeric array")
    if descr not in DTYPES:
        raise NpyError(
            "the .npy dtype %r is not accepted (accepted: %s, little-endian)"
            % (descr, ", ".join(sorted(name for name, _size in DTYPES.values())))
        )
    if header["fortran_order"] is not False:
        raise NpyError("the .npy array is in Fortran order; send it in C order")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise NpyError("the .npy shape must be a tuple of non-negative integers")
    name, size = DTYPES[descr]
    array = Npy(name, shape, b"")
    expected = array.count * size
    data = raw[offset:]
    if len(data) != expected:
        raise NpyError(
            "the .npy data is %d bytes; shape %s of %s needs %d"
            % (len(data), "x".join(str(d) for d in shape) or "()", name, expected)
        )
    array.data = bytes(data)
    return array


def dump(dtype, shape, data):
    # type: (str, Sequence[int], bytes) -> bytes
    """A version 1.0 ``.npy`` file of ``data`` (raw little-endian bytes in C order) with the
    dtype named ``dtype`` (``float32``...) and ``shape``."""
    if dtype not in _NAMES:
        raise NpyError("cannot write dtype %r (writable: %s)" % (dtype, ", ".join(sorted(_NAMES))))
    shape = tuple(int(dim) for dim in shape)
    array = Npy(dtype, shape, data)
    if len(data) != array.count * DTYPES[_NAMES[dtype]][1]:
        raise NpyError("%d bytes do not fill shape %s of %s" % (len(data), shape, dtype))
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (_NAMES[dtype], shape)
    # The header, padded with spaces and ended by a newline, ends on an aligned offset.
    pad = (-(len(MAGIC) + 4 + len(text) + 1)) % _ALIGN
    header = (text + " " * pad + "\n").encode("latin1")
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header + bytes(data)


def dump_numpy(array):
    """``dump`` of a numpy array (converted to its little-endian, C-order form)."""
    import numpy

    array = numpy.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return dump(str(array.dtype), array.shape, array.tobytes())
