"""Bit packing shared by the GGUF layouts: one little-endian bit stream per row, at any width."""

import numpy as np
import pytest

from lowbit_gguf.bits import pack_indices, unpack_indices


@pytest.mark.parametrize("bits", range(1, 17))
def test_indices_round_trip_at_every_width(bits):
    rng = np.random.default_rng(bits)
    n = 8 * 3  # whole bytes at every width
    indices = rng.integers(0, 2**bits, size=(5, n))
    packed = pack_indices(indices, bits)
    assert packed.dtype == np.uint8 and packed.shape == (5, n * bits // 8)
    np.testing.assert_array_equal(unpack_indices(packed, bits, n), indices)


def test_the_widths_the_kernels_read_are_the_known_layouts():
    signs = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    assert pack_indices(signs, 1).tolist() == [[0x81, 0x03]]  # bit j % 8 of byte j / 8
    assert pack_indices(np.array([[3, 12, 5, 0]]), 4).tolist() == [[0xC3, 0x05]]  # low nibble first
    assert pack_indices(np.array([[0x1234, 0xBEEF]]), 16).tolist() == [[0x34, 0x12, 0xEF, 0xBE]]  # little-endian
    assert pack_indices(np.array([[1, 2, 3, 4, 5, 6, 7, 0]]), 3).tolist() == [[209, 88, 31]]  # low bit first


def test_indices_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="fit in 4 bits"):
        pack_indices(np.array([[16, 0]]), 4)
    with pytest.raises(ValueError, match="whole bytes"):
        pack_indices(np.array([[1, 2, 3]]), 3)
