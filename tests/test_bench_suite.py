"""The side-by-side benchmark harness, run in its quick mode on the default model."""

import json

import pytest

from lowbit_gguf.bench_suite import ROW_KEYS, SuiteSettings, flag_overfit, format_markdown, run_suite

pytestmark = [pytest.mark.runtime, pytest.mark.model]


def test_quick_suite_produces_consistent_reports(tmp_path, runtime_build, default_model_dir):
    rows = run_suite(tmp_path, SuiteSettings.quick(), progress=False)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["rows"] == rows
    assert report["stamp"]["patch_hash"] == runtime_build.info["patch_hash"]
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == ["F16", "Q8_0", "IQ2_XXS", "rtn w4g32"]
    assert all(tuple(r) == ROW_KEYS for r in rows)
    f16, q8, iq2 = by_name["F16"], by_name["Q8_0"], by_name["IQ2_XXS"]
    assert f16["kld"] == 0 and f16["bpw_linear"] == 16
    assert q8["bpw_linear"] == pytest.approx(8.5)
    for suffix in ("", "_manual"):  # both evaluation texts
        assert q8[f"ppl{suffix}"] == pytest.approx(f16[f"ppl{suffix}"], rel=0.02) and q8[f"kld{suffix}"] < 0.02
        assert iq2[f"kld{suffix}"] > q8[f"kld{suffix}"] and iq2[f"ppl{suffix}"] > q8[f"ppl{suffix}"]
    assert f16["ppl"] != f16["ppl_manual"]
    assert iq2["bpw_linear"] < 5 and not any(r["overfit"] for r in rows[:2])
    assert by_name["rtn w4g32"]["bpw_linear"] == pytest.approx(5.0)
    assert all(r["tg128"] > 0 and r["pp512"] > 0 for r in rows)
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| IQ2_XXS | llama.cpp |" in (tmp_path / "bench.md").read_text()


def test_markdown_lists_every_row_and_flags_overfit_files():
    rows = [dict(zip(ROW_KEYS, ["F16", "llama.cpp", 16.0, 16.0, 10.0, 0.0, 5.0, 0.0, False, 80.0, 500.0, 1.0])),
            dict(zip(ROW_KEYS, ["A", "fam", 2.0, 2.5, 20.0, 0.1, 12.0, 0.2, False, 50.0, 300.0, 12.0])),
            dict(zip(ROW_KEYS, ["B", "fam", 2.0, 2.5, 20.0, 0.1, 13.0, 0.2, False, 50.0, 300.0, 12.0]))]
    flag_overfit(rows)  # A: 2.0 then 2.4 (within 1.25 x), B: 2.0 then 2.6
    assert [r["overfit"] for r in rows] == [False, False, True]
    stamp = {"model": "m", "upstream": "u", "patch_hash": "p", "machine": "x", "date": "d",
             "settings": SuiteSettings().__dict__}
    text = format_markdown(rows, stamp)
    assert "| A | fam | 2.000 | 2.500 | 20.000 (2.00) | 0.1000 | 12.000 (2.40) | 0.2000 | 50.0 | 300.0 | 12 |" in text
    assert "| B **overfit** | fam |" in text


def test_added_file_takes_method_and_time_from_metadata(tmp_path):
    import gguf
    import numpy as np

    from lowbit_gguf.bench_suite import _added_file

    path = tmp_path / "aqlm.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("lowbit_gguf.method", "aqlm")
    writer.add_string("lowbit_gguf.quantize_seconds", "2514.5")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    added = _added_file("aqlm 2x8", path)
    assert (added.family, added.quant_seconds) == ("aqlm", 2514.5)


def test_add_file_needs_name_and_path():
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    result = CliRunner().invoke(cli, ["bench-suite", "--add-file", "just-a-path.gguf"])
    assert result.exit_code != 0 and "is not NAME=PATH" in result.output
