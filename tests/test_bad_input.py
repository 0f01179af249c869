"""Bad input is refused where it enters, once, with one clear line: every option of every CLI
command (listed from the parsers, not by hand) with each kind of bad value; config fields of the
wrong type; counts of 0 given to ``load()`` and the Runtime; empty batches; text that is not
UTF-8; corrupt tokenizer files; bad clip specs and clip lists."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_assets import tiny_model_dir

from egovlpv2_rt import cli
from egovlpv2_rt.cli import common
from egovlpv2_rt.cli import export as export_cli
from egovlpv2_rt.config import ModelConfig, TextConfig, VideoConfig, preset
from egovlpv2_rt.errors import EgoVLPv2Error, InputError
from egovlpv2_rt.runtime import load
from egovlpv2_rt.tokenizer import RobertaTokenizer
from egovlpv2_rt.train.config import ConfigError, load_train_config
from egovlpv2_rt.video.clip_list import parse_clip_arg, read_clip_list

# ------------------------------------------------------------------------------ CLI matrix

# Bad values for each kind of option, by its parse-time type.
BAD_VALUES = {
    common.positive_int: ["0", "-1", "2.5", "x", ""],
    common.non_negative_int: ["-1", "1.5", "x"],
    common.positive_float: ["0", "-1", "nan", "inf", "x"],
    common.non_negative_float: ["-1", "nan", "inf", "x"],
    common.actor_range: ["0", "3..2", "1..", "x", "0..2"],
    common.text_arg: ["   ", "caf\udce9"],  # blank; b"caf\xe9" (Latin-1) as argv decodes it
    common.clip_spec: ["@-1:2", "a.mp4@-1:2", "a.mp4@3:2", "a.mp4@x:y", "a.mp4@1:inf"],
    common.bench_case: ["video", "text_b0", "score_bx"],
}
# Bad values for the options whose type is built per option (at_least(N), frame sizes, ranges).
BAD_BY_NAME = {
    "_frame_size": ["40", "16", "x"],
    "_range_arg": ["0:1:2", "4:2:8", "1:2", "x"],
    "_fps": ["0", "-25", "nan", "vid"],
}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command: ``egovlpv2 <sub>`` for each registered subcommand, and egovlpv2-export."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: dict[str, argparse.ArgumentParser] = dict(sub.choices)
    found["egovlpv2-export"] = export_cli.build_parser()
    return found


def _main(command: str, argv: list[str]) -> int:
    if command == "egovlpv2-export":
        return export_cli.main(argv)
    return cli.main([command, *argv])


def _bad_values(action: argparse.Action) -> list[str]:
    if action.choices is not None:
        return ["bogus"]
    tp = action.type
    if tp in BAD_VALUES:
        return BAD_VALUES[tp]
    name = getattr(tp, "__name__", "")
    if name.startswith("int>="):
        return [str(int(name[5:]) - 1), "x"]
    return BAD_BY_NAME.get(name, [])


def _required_args(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """Valid stand-ins for the required options (parsing fails before any is used)."""
    out: list[str] = []
    for a in parser._actions:
        if a.required and a is not skip and a.option_strings:
            out += [a.option_strings[0], str(next(iter(a.choices))) if a.choices else "a.mp4"]
    return out


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for command, parser in _parsers().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            for bad in _bad_values(action):
                cases.append((command, action.option_strings[0], bad))
    return cases


CASES = _cases()


def test_every_valued_option_is_checked_at_parse_time():
    """No option is parsed with a bare ``int``/``float`` (which takes 0 and -1), and the
    matrix below covers every command and every option that takes a number or a choice."""
    raw = [
        f"{cmd} {a.option_strings[0]}"
        for cmd, parser in _parsers().items()
        for a in parser._actions
        if a.type in (int, float)
    ]
    assert raw == []
    commands = {c for c, _, _ in CASES}
    assert commands == set(_parsers()) - {"info"}  # info takes no valued option
    assert {"embed", "search", "index", "mcq", "bench", "train", "eval", "egovlpv2-export"} <= (
        commands
    )
    options = {(c, o) for c, o, _ in CASES}
    for expected in [
        ("embed", "--frames"),
        ("embed", "--batch-size"),
        ("search", "--top-k"),
        ("search", "--query"),
        ("index", "--nlist"),
        ("mcq", "--candidates"),
        ("bench", "--repeats"),
        ("bench", "--cases"),
        ("eval", "--max-length"),
        ("synth", "--size"),
        ("demo", "--top-k"),
        ("train", "--device"),
        ("features", "--fps"),
        ("features", "--window-batch"),
        ("train-head", "--epochs"),
        ("eval-head", "--baseline-seed"),
        ("egovlpv2-export", "--opset"),
        ("egovlpv2-export", "--batch"),
        ("egovlpv2-export", "--workspace-gib"),
    ]:
        assert expected in options, expected


@pytest.mark.parametrize(
    ("command", "option", "bad"), CASES, ids=[f"{c} {o} {b!a}" for c, o, b in CASES]
)
def test_bad_option_is_one_line_exit_2(command, option, bad, capsys):
    parser = _parsers()[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    argv = [*_required_args(parser, action), option, bad]
    with pytest.raises(SystemExit) as exc:
        _main(command, argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert f"argument {option}" in err, err
    prog = "egovlpv2-export" if command == "egovlpv2-export" else f"egovlpv2 {command}"
    assert err.startswith(f"{prog}: error: "), err
    err.encode("ascii" if not bad.isascii() else "utf-8")  # a bad byte is never echoed raw


def test_bad_option_messages_say_what_is_expected(capsys):
    for command, argv, needle in [
        ("embed", ["--videos", "v", "--out", "o.safetensors", "--batch-size", "-1"], "-1"),
        ("index", ["--embeddings", "e", "--out", "o.faiss", "--nlist", "-2"], "positive integer"),
        ("embed", ["--videos", "v", "--out", "o.safetensors", "--frames", "0"], "got '0'"),
        ("mcq", ["--query", "q", "--candidates", "a.mp4@3:2", "b.mp4"], "END (2) must be after"),
        ("mcq", ["--query", "q", "--candidates", "@-1:2", "b.mp4"], "no file before '@'"),
        ("search", ["--embeddings", "e", "--query", "a\udcffb"], "byte 0xff at position 1"),
        ("eval", ["--data", "d", "--max-length", "1"], "room for <s> and </s>"),
    ]:
        with pytest.raises(SystemExit):
            _main(command, argv)
        err = capsys.readouterr().err
        assert needle in err, err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["search", "--embeddings", "e.safetensors", "--query", b"caf\xe9"], "--query"),
        (["mcq", "--query", b"\xff\xfe", "--candidates", "a.mp4", "b.mp4"], "--query"),
    ],
)
def test_non_utf8_argv_bytes(argv, option):
    """Bytes that are not UTF-8, as a shell passes them: one line, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "egovlpv2_rt.cli", *argv],
        capture_output=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"argument {option}: not valid UTF-8 text" in err, err


# ------------------------------------------------------------------------------ model config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"video": {"qkv_bias": "false"}}, "video.qkv_bias must be true or false, got 'false'"),
        ({"video": {"qkv_bias": 0}}, "video.qkv_bias must be true or false, got 0"),
        ({"video": {"num_frames": 0}}, "video.num_frames must be a positive int, got 0"),
        ({"video": {"num_frames": 2.5}}, "video.num_frames must be a positive int, got 2.5"),
        ({"video": {"num_frames": 4.0}}, "video.num_frames must be a positive int, got 4.0"),
        ({"video": {"depth": True}}, "video.depth must be a positive int, got True"),
        ({"video": {"mlp_ratio": "4"}}, "video.mlp_ratio must be a finite number, got '4'"),
        ({"video": {"drop_rate": 1.5}}, "video.drop_rate must be a probability in [0, 1), got 1.5"),
        ({"video": {"time_init": None}}, "video.time_init must be a string, got None"),
        ({"video": [1, 2]}, "video: expected a mapping, got [1, 2]"),
        ({"text": {"layer_norm_eps": float("nan")}}, "text.layer_norm_eps must be a finite number"),
        ({"text": {"pad_token_id": False}}, "text.pad_token_id must be an int, got False"),
        ({"text": {"max_position_embeddings": -3}}, "text.max_position_embeddings must be a pos"),
        ({"fusion": {"num_heads": "12"}}, "fusion.num_heads must be a positive int, got '12'"),
        ({"loss": {"noun": "yes"}}, "loss.noun must be true or false, got 'yes'"),
        ({"loss": {"temperature": float("inf")}}, "loss.temperature must be a finite number"),
        ({"projection_dim": 0}, "projection_dim must be a positive int, got 0"),
        ({"task_names": 3}, "task_names must be a string, got 3"),
    ],
)
def test_model_config_field_errors_name_file_key_type_and_value(data, message):
    with pytest.raises(InputError) as exc:
        ModelConfig.from_dict(data, where="config.json")
    assert str(exc.value).startswith(f"config.json: {message}"), str(exc.value)


def test_model_config_direct_construction_is_checked_too():
    with pytest.raises(InputError, match=r"VideoConfig.qkv_bias must be true or false"):
        VideoConfig(qkv_bias="false")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"TextConfig.vocab_size must be a positive int, got 0"):
        TextConfig(vocab_size=0)
    with pytest.raises(InputError, match=r"embed_dim must be a positive int, got -1"):
        preset("tiny", embed_dim=-1)
    with pytest.raises(InputError, match=r"config\.json: not valid JSON"):
        ModelConfig.from_json("{", where="config.json")
    assert ModelConfig.from_dict(preset("tiny").to_dict()) == preset("tiny")


# ------------------------------------------------------------------------------ train config


def _train_file(tmp_path: Path, text: str, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"exp{suffix}"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {num_frames: 0}\n", "data.num_frames: must be >= 1, got 0"),
        ("data: {max_text_length: 0}\n", "data.max_text_length: must be >= 2"),
        ("data: {image_size: -1}\n", "data.image_size: must be >= 1, got -1"),
        ("data: {num_frames: 2.0}\n", "data.num_frames: expected an integer, got 2.0"),
        (
            "data: {train_augment: 'false'}\n",
            "data.train_augment: expected true/false, got 'false'",
        ),
        ("data: {backend: opencv}\n", "data.backend: expected one of ['pyav'"),
        ("global_batch_size: 2.5\n", "global_batch_size: expected an integer, got 2.5"),
        ("global_batch_size: 0\n", "global_batch_size: must be >= 2"),
        ("eval: {batch_size: 0}\n", "eval.batch_size: must be >= 1, got 0"),
        ("optim: {lr: .nan}\n", "optim.lr: expected a finite number, got nan"),
        ("optim: {betas: [0.9, 1.5]}\n", "optim.betas: must both be in [0, 1)"),
        ("log_every: 0\n", "log_every: must be >= 1, got 0"),
        ("deterministic: 1\n", "deterministic: expected true/false, got 1"),
        (
            "model: {overrides: {video: {qkv_bias: 'false'}}}\n",
            "model: video.qkv_bias must be true or false, got 'false'",
        ),
        ("model: {preset: huge}\n", "model: preset: unknown name 'huge'"),
        ("- 1\n- 2\n", "top level: expected a mapping, got list"),
        ("data: {num_frames: [\n", "cannot parse"),
    ],
)
def test_train_config_errors_name_file_and_key(tmp_path, text, message):
    path = _train_file(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_train_config(path)
    assert str(exc.value).startswith(f"{path}: "), str(exc.value)
    assert message in str(exc.value), str(exc.value)


def test_train_config_json_nan_and_bytes(tmp_path):
    path = _train_file(tmp_path, '{"optim": {"lr": NaN}}', ".json")
    with pytest.raises(ConfigError, match=r"exp\.json: optim\.lr: expected a finite number"):
        load_train_config(path)
    path.write_bytes(b'{"out_dir": "\xff"}')
    with pytest.raises(ConfigError, match=r"exp\.json: not UTF-8 text"):
        load_train_config(path)


# ------------------------------------------------------------------------------ load / Runtime


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames must be a positive int (or None), got 0"),
        ({"max_text_length": 0}, "max_text_length must be a positive int (or None), got 0"),
        ({"max_text_length": 1}, "max_text_length must be >= 2"),
        ({"video_batch_size": 0}, "video_batch_size must be a positive int (or None), got 0"),
        ({"text_batch_size": -4}, "text_batch_size must be a positive int (or None), got -4"),
        ({"num_frames": 2.5}, "num_frames must be a positive int (or None), got 2.5"),
        ({"decode_workers": 0}, "decode_workers must be a positive int (or None), got 0"),
        ({"cache_size": -1}, "cache_size must be an int >= 0"),
    ],
)
def test_load_refuses_zero_and_negative_counts_first(tmp_path, kwargs, message):
    # Refused before the (missing) checkpoint is even looked at.
    with pytest.raises(InputError) as exc:
        load(tmp_path / "missing.safetensors", **kwargs)
    assert message in str(exc.value)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    return load(tiny_model_dir(tmp_path_factory), device="cpu")


def test_empty_batches_are_input_errors(rt):
    """Choice: an empty batch is an error naming the argument (not an empty [0, P] result): a
    caller that passes nothing has almost always lost its input on the way."""
    frames = torch.zeros(4, 3, 32, 32)
    for call, needle in [
        (lambda: rt.encode_video([]), "clips: empty"),
        (lambda: rt.encode_video(torch.zeros(0, 4, 3, 32, 32)), "clips: an empty batch"),
        (lambda: rt.encode_text([]), "texts: expected a non-empty"),
        (lambda: rt.score([], []), "texts: expected a non-empty"),
        (lambda: rt.score([], ["a caption"]), "clips: empty"),
        (lambda: rt.similarity(["a caption"], []), "clips: empty"),
        (lambda: rt.mcq("which one?", []), "need at least 2 candidates, got 0"),
        (lambda: rt.mcq("which one?", [frames]), "need at least 2 candidates, got 1"),
    ]:
        with pytest.raises(InputError, match=needle):
            call()


def test_runtime_batch_sizes_and_text(rt):
    frames = torch.zeros(4, 3, 32, 32)
    with pytest.raises(InputError, match=r"batch_size must be a positive int .*got 0"):
        rt.encode_video([frames], batch_size=0)
    with pytest.raises(InputError, match=r"batch_size must be a positive int .*got -1"):
        rt.encode_text(["a caption"], batch_size=-1)
    with pytest.raises(InputError, match=r"texts\[1\]: not valid Unicode text \('\\udcff'"):
        rt.encode_text(["fine", "caf\udcff"])
    with pytest.raises(InputError, match=r"query\[0\]: not valid Unicode"):
        rt.mcq("\ud800?", [frames, frames])
    assert rt.encode_video([frames], batch_size=1).shape == (1, rt.embedding_dim)


# ------------------------------------------------------------------------------ files


def test_corrupt_tokenizer_json_names_the_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    for content in ["{not json", "{}", json.dumps({"model": {"type": "BPE"}}), ""]:
        bad.write_text(content)
        with pytest.raises(InputError, match=rf"^{bad}: not a valid tokenizer\.json \("):
            RobertaTokenizer.from_tokenizer_json(bad)
    with pytest.raises(InputError, match=rf"{tmp_path / 'vocab.json'}"):
        (tmp_path / "vocab.json").write_text("[1, 2]")
        (tmp_path / "merges.txt").write_text("#version: 0.2\n")
        RobertaTokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_tokenizer_without_special_tokens_names_the_file(tmp_path, tmp_path_factory):
    src = tiny_model_dir(tmp_path_factory) / "tokenizer.json"
    data = json.loads(src.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<pad>"]
    data["model"]["vocab"].pop("<pad>")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"^{path}: the vocabulary has no special token '<pad>'"):
        RobertaTokenizer.from_tokenizer_json(path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("@-1:2", "clip '@-1:2': no file before '@'"),
        ("a.mp4@-1:2", "clip 'a.mp4@-1:2': START must be a number of seconds >= 0, got '-1'"),
        ("a.mp4@3:2", "clip 'a.mp4@3:2': END (2) must be after START (3)"),
        ("a.mp4@2:2", "clip 'a.mp4@2:2': END (2) must be after START (2)"),
        ("a.mp4@x:y", "clip 'a.mp4@x:y': START must be a number of seconds >= 0, got 'x'"),
        ("a.mp4@1:", "clip 'a.mp4@1:': END must be a number of seconds >= 0, got ''"),
        ("a.mp4@nan:3", "clip 'a.mp4@nan:3': START must be a number of seconds >= 0, got 'nan'"),
        (
            "a.mp4@1:1e999",
            "clip 'a.mp4@1:1e999': END must be a number of seconds >= 0, got '1e999'",
        ),
        ("", "clip '': empty"),
    ],
)
def test_bad_clip_specs(spec, message):
    with pytest.raises(InputError) as exc:
        parse_clip_arg(spec)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "PATH@START:END" in str(exc.value)


def test_clip_specs_that_are_file_names():
    assert parse_clip_arg("a@b.mp4") == ("a@b.mp4", None, None)
    assert parse_clip_arg("dir@1:2/a.mp4") == ("dir@1:2/a.mp4", None, None)
    assert parse_clip_arg("a.mp4@.5:1e1") == ("a.mp4", 0.5, 10.0)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("l.txt", "ok.mp4\nb.mp4@-1:2\n", "l.txt, line 2: clip 'b.mp4@-1:2': START must be"),
        ("l.csv", "path,start,end\na.mp4,nan,2\n", "l.csv, row 2: start/end must be numbers"),
        ("l.csv", "path,start,end\na.mp4,-1,2\n", "row 2: start/end must be numbers"),
        (
            "l.tsv",
            "path\tstart\tend\na.mp4\t3\t1\n",
            "l.tsv, row 2: END (1) must be after START (3)",
        ),
        ("l.csv", "path,start\n,1\n", "row 2: empty 'path'"),
        ("l.txt", "# only a comment\n", "l.txt: lists no clips"),
    ],
)
def test_bad_clip_lists_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as exc:
        read_clip_list(path)
    assert message in str(exc.value), str(exc.value)


def test_clip_list_not_utf8(tmp_path):
    path = tmp_path / "l.txt"
    path.write_bytes(b"caf\xe9.mp4\n")
    with pytest.raises(InputError, match=r"l\.txt: not UTF-8 text"):
        read_clip_list(path)
    assert issubclass(InputError, EgoVLPv2Error)
