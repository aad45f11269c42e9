"""Command-line behaviour on bad input: clear messages, exit code 1, nothing written."""

import json

from click.testing import CliRunner

from lowbit_gguf.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_convert_missing_model_dir(tmp_path):
    result = invoke("convert", tmp_path / "nope", "-o", tmp_path / "x.gguf")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_convert_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    result = invoke("convert", tmp_path, "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1
    assert "is a BertModel; lowbit-gguf supports LlamaForCausalLM" in result.output
    assert not (tmp_path / "x.gguf").exists()


def test_convert_dir_without_config(tmp_path):
    result = invoke("convert", tmp_path, "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1 and "no config.json" in result.output


def test_inspect_unreadable_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    result = invoke("inspect", bad)
    assert result.exit_code == 1 and "GGUF version 4294967295" in result.output
    result = invoke("inspect", tmp_path / "missing.gguf")
    assert result.exit_code == 1 and "no such GGUF file" in result.output


def test_finetune_unreadable_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    result = invoke("finetune", bad, tmp_path / "model", "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1 and "GGUF version 4294967295" in result.output
    assert not (tmp_path / "x.gguf").exists()


def test_quantize_unknown_method(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    result = invoke("quantize", tmp_path, "--method", "nope", "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1 and "unknown method 'nope'" in result.output


def test_methods_lists_baselines():
    result = invoke("methods")
    assert result.exit_code == 0 and "rtn" in result.output and "identity" not in result.output  # tests only


def test_set_names_the_fields_a_config_has(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    result = invoke("quantize", tmp_path, "--method", "aqlm", "--config", "2x8", "--set", "beam=8",
                    "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1 and "has no field 'beam'" in result.output and "beam_size" in result.output
    result = invoke("quantize", tmp_path, "--method", "aqlm", "--set", "beam_size", "-o", tmp_path / "x.gguf")
    assert result.exit_code != 0 and "FIELD=VALUE" in result.output


def test_methods_lists_config_fields_with_their_defaults():
    result = invoke("methods", "--fields")
    assert result.exit_code == 0 and "beam_size = 4" in result.output and "salient_ratio = 0.2" in result.output
