"""jetson_agent.npy: the agent's standard-library .npy reader and writer agree with numpy on
every dtype it accepts, and refuse what it must (pickles above all) with a clear message."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from jetson_agent import npy


def saved(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted({n for n, _ in npy.DTYPES.values()}))
def test_numpys_files_are_read_and_its_reader_reads_ours(name: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 2, 5)) * 50).astype(name)
    parsed = npy.parse(saved(array))
    assert (parsed.dtype, parsed.shape) == (name, (3, 2, 5))
    assert np.array_equal(parsed.to_numpy(), array)
    written = npy.dump_numpy(array)
    assert np.array_equal(np.load(io.BytesIO(written), allow_pickle=False), array)
    assert written == npy.dump(name, array.shape, array.tobytes())


def test_scalars_empty_arrays_and_header_versions_2_and_3() -> None:
    for array in (np.float32(2.5).reshape(()), np.zeros((0, 4), np.float32)):
        assert np.array_equal(npy.parse(saved(array)).to_numpy(), array)
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    for version in ((2, 0), (3, 0)):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, version=version)
        assert np.array_equal(npy.parse(buffer.getvalue()).to_numpy(), array)
    big_endian = np.arange(4, dtype=">f4")
    assert np.array_equal(np.load(io.BytesIO(npy.dump_numpy(big_endian))), big_endian)


def test_a_pickle_disguised_as_npy_is_refused_unread() -> None:
    objects = np.array([1, "two", None], dtype=object)
    with pytest.raises(npy.NpyError, match="object arrays"):
        npy.parse(saved(objects, allow_pickle=True))
    raw_pickle = pickle.dumps(np.zeros(3))
    with pytest.raises(npy.NpyError, match=r"not an \.npy file"):
        npy.parse(raw_pickle)
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + "\n"
    disguised = npy.MAGIC + b"\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    with pytest.raises(npy.NpyError, match="object arrays"):
        # What numpy would unpickle from such a file: here a call of os.system.
        npy.parse(disguised + b"cos\nsystem\n(S'touch /tmp/vitopt-unpickled'\ntR.")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not an .npy file"),
        (b"\x93NUMPY\x01\x00\xff", "not an .npy file"),
        (b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16, "unsupported .npy format version 9"),
        (b"\x93NUMPY\x01\x00\x40\x00{'descr'", "truncated inside its header"),
        (b"\x93NUMPY\x01\x00\x08\x00__import", "not a Python literal dictionary"),
        (b"\x93NUMPY\x01\x00\x0f\x00{'shape': (1,)}", "exactly the keys"),
    ],
)
def test_malformed_headers_are_refused_with_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(npy.NpyError, match=message):
        npy.parse(raw)


def test_wrong_dtype_order_shape_or_length_is_refused() -> None:
    cases = [
        (saved(np.zeros(2, np.complex64)), "dtype '<c8' is not accepted"),
        (saved(np.zeros(2, ">f4")), "dtype '>f4' is not accepted"),
        (saved(np.asfortranarray(np.zeros((2, 3), np.float32))), "Fortran order"),
        (saved(np.zeros(4, np.float32))[:-3], "data is 13 bytes; shape 4 of float32 needs 16"),
        (saved(np.zeros(4, np.float32)) + b"\x00", "data is 17 bytes"),
        (saved(np.zeros(2, [("a", "<f4"), ("b", "<i4")])), "structured"),
    ]
    for raw, message in cases:
        with pytest.raises(npy.NpyError, match=message):
            npy.parse(raw)
    with pytest.raises(npy.NpyError, match="do not fill shape"):
        npy.dump("float32", (2, 2), b"\x00" * 12)
