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


def test_fast_preset_sets_method_fields_and_calibration_the_command_line_does_not(tmp_path, monkeypatch):
    import lowbit_gguf.export

    calls = []

    def record(*args, **kwargs):  # what quantize would run with, without running it
        calls.append((args, kwargs))
        raise SystemExit(0)

    monkeypatch.setattr(lowbit_gguf.export, "quantize_checkpoint", record)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    invoke("quantize", tmp_path, "--method", "aqlm", "--config", "2x8", "--preset", "fast", "--samples", "24",
           "--set", "beam_size=3", "-o", tmp_path / "x.gguf")
    (_, _, config, _), options = calls[0]
    assert (config.max_rounds, config.finetune_epochs, config.beam_size) == (2, 1, 3)  # --set after the preset
    assert (options["n_samples"], options["seq_len"], options["n_heldout"]) == (24, 256, 2)  # --samples wins
    assert options["preset"] == "fast"
    invoke("quantize", tmp_path, "--method", "aqlm", "--config", "2x8", "-o", tmp_path / "x.gguf")
    (_, _, config, _), options = calls[1]
    assert config.max_rounds == 6 and options["n_samples"] == 128 and options["preset"] == "default"
    result = invoke("quantize", tmp_path, "--method", "aqlm", "--preset", "slow", "-o", tmp_path / "x.gguf")
    assert result.exit_code == 2 and "'slow' is not one of" in result.output


def test_inspect_says_how_a_file_was_made():
    from lowbit_gguf.gguf.inspect import describe_quantization

    config = {"num_codebooks": 2, "nbits": 8, "group_size": 8, "beam_size": 2, "max_rounds": 6}
    lines = describe_quantization({"method": "aqlm", "config": json.dumps(config), "preset": "fast",
                                   "quantize_seconds": "73.4", "finetune": "{}"})
    assert lines == ["method:       aqlm 2x8 (beam_size=2)", "made:         preset fast, quantized in 73 s, "
                     "fine-tuned end to end"]
    imported = describe_quantization({"method": "vptq", "imported_from": "vptq", "config": json.dumps(
        {"vector_len": 8, "num_centroids": 65536, "num_res_centroids": 256})})
    assert imported[0] == "method:       vptq v8k65536r256" and "published vptq checkpoint" in imported[1]
    assert describe_quantization({}) == []


def test_converter_warnings_and_tracebacks_stay_visible(tmp_path, capfd):
    import sys

    from lowbit_gguf.gguf.convert import _run_logged

    script = ("import sys; print('INFO:hf-to-gguf:blk.0.attn_q.weight, torch.float32 --> F16'); "
              "print('WARNING:hf-to-gguf:unknown pre-tokenizer'); raise SystemExit('Traceback (most recent call last)"
              "\\nValueError: broken')")
    code = _run_logged([sys.executable, "-c", script], tmp_path / "log", show_progress=True, echo_all=False)
    err = capfd.readouterr().err
    assert code == 1 and "unknown pre-tokenizer" in err and "ValueError: broken" in err and "attn_q" not in err
    assert "attn_q" in (tmp_path / "log").read_text()
