"""The one type table: generated C files in step with it, gguf knows the types, packed weights round-trip."""

import numpy as np
import pytest

import gguf
from lowbit_gguf.gguf.types import BY_ID, FIRST_ID, GENERATED, LOWBIT_TYPES, SRC_DIR, aqlm_type, gguf_type
from lowbit_gguf.gguf.write import PackedWeight, llama_rows_permutation

from conftest import AQLM_CONFIGS
from lowbit_gguf.random_weights import random_aqlm_payload, random_packed


@pytest.mark.parametrize("rel", sorted(GENERATED))
def test_generated_c_files_match_the_table(rel):
    on_disk = (SRC_DIR / rel).read_text()
    assert on_disk == GENERATED[rel](), f"{rel} is stale: run tools/generate-c-types"


def test_ids_unique_and_far_from_upstream():
    ids = [t.type_id for t in LOWBIT_TYPES]
    assert len(set(ids)) == len(ids) and min(ids) >= FIRST_ID >= 200
    assert len({t.name for t in LOWBIT_TYPES}) == len(LOWBIT_TYPES)


def test_gguf_package_knows_the_types():
    for t in LOWBIT_TYPES:
        member = gguf.GGMLQuantizationType(t.type_id)
        assert member is gguf_type(t) and member.name == t.name
        assert gguf.GGML_QUANT_SIZES[member] == (t.block_size, t.type_size)


def test_aqlm_configs_map_to_types():
    assert aqlm_type(2, 8, 8).name == "AQLM_2X8"
    assert aqlm_type(1, 16, 8).type_size == 2
    with pytest.raises(ValueError, match="has no GGUF type"):
        aqlm_type(3, 8, 8)


@pytest.mark.parametrize("config_text", AQLM_CONFIGS)
def test_aqlm_pack_layout(config_text):
    spec, config, payload = random_aqlm_payload(config_text)
    packed = spec.pack(payload, config)
    t = packed.lowbit_type
    assert packed.codes.shape == (24, 64 // 8 * t.type_size)
    # code m of group b of row r sits at bytes [(b*M + m) * B/8, ...), little-endian
    width = config.nbits // 8
    r, b, m = 5, 3, config.num_codebooks - 1
    offset = (b * config.num_codebooks + m) * width
    stored = int.from_bytes(packed.codes[r, offset:offset + width].tobytes(), "little")
    assert stored == int(payload["codes"][r, b, m]) % config.codebook_size


def test_gguf_round_trip_of_a_packed_weight(tmp_path):
    spec, config, payload = random_aqlm_payload("2x8")
    packed = spec.pack(payload, config)
    path = tmp_path / "one.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.attn_q.weight", packed.codes, raw_dtype=gguf_type(packed.lowbit_type))
    for suffix, side in packed.sides.items():
        writer.add_tensor(f"blk.0.attn_q.{suffix}", side)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    weight = tensors["blk.0.attn_q.weight"]
    assert weight.tensor_type.name == "AQLM_2X8" and list(weight.shape) == [64, 24]
    np.testing.assert_array_equal(np.asarray(weight.data), packed.codes)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_q.codebook"].data), packed.sides["codebook"])
    assert list(tensors["blk.0.attn_q.codebook"].shape) == [8, 256, 2]  # ggml order


def test_packed_weight_rejects_wrong_shapes():
    spec, config, payload = random_aqlm_payload("2x8")
    packed = spec.pack(payload, config)
    with pytest.raises(ValueError, match="codebook"):
        PackedWeight(packed.lowbit_type, packed.codes, {**packed.sides, "codebook": packed.sides["codebook"][:1]},
                     packed.n_per_row)
    with pytest.raises(ValueError, match="uint8"):
        PackedWeight(packed.lowbit_type, packed.codes[:, :-1], packed.sides, packed.n_per_row)


def test_row_permutation_follows_the_pinned_converter():
    """LlamaModel.permute of the pinned upstream converter (run in its own process, beside its own gguf-py),
    applied to a matrix whose rows are their own indices, gives the order llama_rows_permutation says."""
    import json
    import subprocess
    import sys

    from lowbit_gguf.gguf.convert import upstream_source

    d_out, head_counts = 24, (3, 2, 1)
    code = ("import sys, json, torch; sys.path[:0] = [sys.argv[1] + '/gguf-py', sys.argv[1]]\n"
            "from conversion.llama import LlamaModel\n"
            f"rows = torch.arange({d_out})[:, None].repeat(1, 2)\n"
            f"print(json.dumps([LlamaModel.permute(rows, h, None)[:, 0].tolist() for h in {head_counts}]))")
    proc = subprocess.run([sys.executable, "-c", code, str(upstream_source())], capture_output=True, text=True,
                          check=True)
    converted = json.loads(proc.stdout)
    for n_head, rows in zip(head_counts, converted):
        np.testing.assert_array_equal(llama_rows_permutation(d_out, n_head), rows)
    assert BY_ID[FIRST_ID + 1].name == "AQLM_2X8"


@pytest.mark.parametrize("lowbit_type", LOWBIT_TYPES, ids=[t.name for t in LOWBIT_TYPES])
def test_a_packed_weight_refuses_sides_of_another_type_or_shape(lowbit_type):
    packed = random_packed(lowbit_type)
    for side in lowbit_type.side_specs:
        data = packed.sides[side.suffix]
        for bad, message in ((data.astype(np.float32), f"{side.suffix}' must be {side.ggml_type}"),
                             (data[..., :-1], f"{side.suffix}' must have shape")):
            with pytest.raises(ValueError, match=message):
                PackedWeight(lowbit_type, packed.codes, {**packed.sides, side.suffix: bad}, packed.n_per_row)

