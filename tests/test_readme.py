"""The README's examples work as written.

The Python blocks run in a folder holding the files they name (synthetic clips, an export folder
of a tiny model, a ``.pth`` checkpoint in the original's format made of the golden tiny
weights); the released-model example runs on the golden tiny configuration instead of ``base``
and its outputs are compared with the original's golden outputs. Every ``egovlpv2`` /
``egovlpv2-export`` line of the shell block parses with the real command-line parsers.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_assets import tiny_export_dir
from safetensors.torch import load_file

from egovlpv2_rt import cli
from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.cli import export as export_cli
from egovlpv2_rt.video import read_clip
from egovlpv2_rt.video.synthetic import write_video

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).double(), torch.as_tensor(np.asarray(b)).double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_golden) -> Path:
    d = tmp_path_factory.mktemp("readme")
    for name, frames in (("clip", 40), ("long", 200), ("a", 30), ("b", 30), ("c", 30)):
        write_video(d / f"{name}.mp4", frames, width=64, height=48)  # long.mp4: 6.7 s
    (d / "exported").symlink_to(tiny_export_dir(tmp_path_factory), target_is_directory=True)
    # A released checkpoint as the original writes it: {"state_dict": ...} with DDP prefixes.
    weights = load_file(str(tiny_golden.weights))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, d / "egovlpv2.pth")
    return d


def test_readme_has_the_examples_this_file_runs():
    assert len(_blocks("python")) == 2 and len(_blocks("bash")) >= 2


def test_readme_runtime_example(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    scope: dict = {}
    exec(compile(_blocks("python")[0], "README.md (runtime example)", "exec"), scope)
    first, onnx_rt = scope["v"], scope["rt"]
    p_dim = scope["t"].shape[1]
    assert scope["v"].shape == (2, p_dim) and scope["t"].shape == (1, p_dim)
    assert scope["p"].shape == (1,) and 0.0 <= float(scope["p"][0]) <= 1.0
    a = scope["a"]
    assert a.answer == int(np.argmax(a.scores)) and a.mode == "ensemble"
    assert np.allclose(a.scores, a.dual + a.fusion, rtol=0, atol=1e-6)
    assert onnx_rt.backend == "onnxruntime"
    # The first embedding is the shipped model's own output for clip.mp4.
    import egovlpv2_rt

    rt = egovlpv2_rt.load(device="cpu")
    model = load_model(egovlpv2_rt.default_model_path(), attention_impl="reference")
    p = rt.preprocessing
    pixels = read_clip("clip.mp4", num_frames=p.num_frames, transform=rt.clip_decoder.transform)
    with torch.no_grad():
        ref = model.encode_video(pixels[None])
    assert _rel(first[:1], ref) <= 1e-5


def test_readme_model_example_on_the_golden_tiny_model(workdir, monkeypatch, tiny_golden):
    code = _blocks("python")[1]
    assert code.count('preset("base")') == 1
    code = code.replace('preset("base")', 'preset("tiny")')  # the golden configuration
    io = load_file(str(tiny_golden.io))
    scope = {
        "video": io["video_f32"],
        "input_ids": io["input_ids"],
        "attention_mask": io["attention_mask"],
    }
    monkeypatch.chdir(workdir)
    with torch.no_grad():
        exec(compile(code, "README.md (model example)", "exec"), scope)
    assert _rel(scope["video_emb"], io["video_embeds_f32"]) <= 1e-5
    assert _rel(scope["text_emb"], io["text_embeds_f32"]) <= 1e-5
    assert _rel(scope["vtm"], io["itm_logits_f32"]) <= 1e-5


def _command_lines() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line)  # comments
            line = re.sub(r"\[[^\]]*\]", "", line)  # [optional parts]
            if "-m egovlpv2_rt.cli " in line:
                line = "egovlpv2 " + line.split("-m egovlpv2_rt.cli ", 1)[1]
            if line.startswith(("egovlpv2 ", "egovlpv2-export ")):
                lines.append(shlex.split(line))
    return lines


def test_readme_command_lines_parse():
    lines = _command_lines()
    commands = {args[1] for args in lines if args[0] == "egovlpv2"}
    assert {"embed", "search", "index", "mcq", "info", "synth", "train", "eval"} <= commands
    assert any(args[0] == "egovlpv2-export" for args in lines)
    for args in lines:
        parser = cli.build_parser() if args[0] == "egovlpv2" else export_cli.build_parser()
        parsed = parser.parse_args(args[1:])  # a usage error exits with status 2
        assert parsed is not None, args
