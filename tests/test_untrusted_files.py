"""No code from any file the package reads runs: one test per reader.

Each test plants, under the name the reader expects, an object whose unpickling would create a
marker file (a ``__reduce__`` calling ``pathlib.Path.touch``), as a torch file where the reader
takes torch files and as raw pickle bytes elsewhere (YAML gets ``!!python/object/apply``), then
asserts that the marker never appears and that the reader raises the package's own error
naming the file. ``test_payload_is_live`` shows the payload does create the marker when
unpickled without restriction, so a reader that ran it would be caught.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from egovlpv2_rt.checkpoint import (
    init_text_from_hf_roberta,
    init_video_from_timm,
    load_checkpoint,
    load_model,
)
from egovlpv2_rt.config import preset
from egovlpv2_rt.data.egoclip import MetadataError, read_egoclip
from egovlpv2_rt.data.egomcq import read_egomcq
from egovlpv2_rt.errors import EgoVLPv2Error, InputError, UnsafeFileError
from egovlpv2_rt.export.metadata import read_manifest, read_sidecar
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.runtime.store import load_embeddings, merge_shards
from egovlpv2_rt.tokenizer import RobertaTokenizer
from egovlpv2_rt.train.config import ConfigError, load_train_config
from egovlpv2_rt.train.state import load_training_state, save_training_state

# Plain pickles are written with protocol 4; torch warns that it reads protocol 2 by default.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a file's code ran"


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)})


def _torch_file(path: Path, marker: Path, **entries) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**entries, "x": _Payload(marker)}, path)
    return path


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pickle_bytes(marker))
    return path


def test_payload_is_live(tmp_path: Path) -> None:
    m = tmp_path / "PWNED"
    # The only unrestricted unpickling in the package's tests: our own bytes, to prove them.
    pickle.loads(_pickle_bytes(m))
    assert m.exists()
    m.unlink()


# -- model checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "pytorch_model.bin"])
def test_checkpoint_torch_file_with_payload(tmp_path, marker, name):
    path = _torch_file(tmp_path / name, marker, state_dict={"w": torch.zeros(2)})
    with pytest.raises(UnsafeFileError, match=rf"{name}: refused, loading it would run code"):
        load_checkpoint(EgoVLPv2(preset("tiny")), path)
    with pytest.raises(UnsafeFileError, match=name):
        load_model(path, preset("tiny"))


def test_checkpoint_plain_pickle_and_foreign_zip(tmp_path, marker):
    plain = _plant(tmp_path / "model.pth", marker)
    with pytest.raises(InputError, match=r"model\.pth: not a readable EgoVLPv2 checkpoint"):
        load_model(plain, preset("tiny"))
    # A legacy .pth zip that is not a torch file (e.g. an archive of the release's files).
    foreign = tmp_path / "egovlpv2.pth"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("egovlpv2/data.pkl", _pickle_bytes(marker))
        z.writestr("README.txt", "weights")
    with pytest.raises(InputError, match=r"egovlpv2\.pth: not a readable EgoVLPv2 checkpoint"):
        load_model(foreign, preset("tiny"))


def test_safetensors_checkpoint_that_is_a_pickle(tmp_path, marker):
    path = _plant(tmp_path / "model.safetensors", marker)
    with pytest.raises(InputError, match=r"model\.safetensors: not a readable EgoVLPv2"):
        load_model(path)
    from egovlpv2_rt import runtime

    with pytest.raises(InputError, match=r"model\.safetensors: not a readable EgoVLPv2"):
        runtime.load(path.parent, device="cpu")


def test_hf_folder_pytorch_model_bin_and_config(tmp_path, marker):
    hf = tmp_path / "roberta"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    _torch_file(hf / "pytorch_model.bin", marker, **{"roberta.embeddings.x": torch.zeros(1)})
    model = EgoVLPv2(preset("tiny"))
    with pytest.raises(UnsafeFileError, match=r"pytorch_model\.bin: refused"):
        init_text_from_hf_roberta(model, hf)
    _plant(hf / "config.json", marker)
    with pytest.raises(InputError, match=r"config\.json: not valid JSON"):
        init_text_from_hf_roberta(model, hf)


def test_timm_weights_file(tmp_path, marker):
    path = _torch_file(tmp_path / "vit.pth", marker, cls_token=torch.zeros(1, 1, 8))
    with pytest.raises(UnsafeFileError, match=r"vit\.pth: refused"):
        init_video_from_timm(EgoVLPv2(preset("tiny")), path)


# -- training state -------------------------------------------------------------------------


def _tiny_state(step: int = 3) -> dict:
    return {
        "step": step,
        "model": {"w": torch.arange(4.0)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
        "scheduler": {"last_epoch": step},
        "sampler": {"seed": 0},
        "rng": [
            {
                "torch": torch.get_rng_state(),
                "numpy": {
                    "bit_generator": "MT19937",
                    "key": list(range(624)),
                    "pos": 624,
                    "has_gauss": 0,
                    "cached_gaussian": 0.0,
                },
                "python": {"version": 3, "internal": [0] * 625, "gauss_next": None},
            }
        ],
        "config": {},
        "model_config": {},
    }


def test_resume_state_legacy_pt_with_payload(tmp_path, marker):
    path = _torch_file(tmp_path / "last.pt", marker, step=3)
    with pytest.raises(UnsafeFileError, match=r"last\.pt: refused, reading it would run code"):
        load_training_state(path)
    plain = _plant(tmp_path / "plain" / "last.pt", marker)  # pickle.dumps, not torch.save
    with pytest.raises(UnsafeFileError, match=r"plain/last\.pt: refused"):
        load_training_state(plain)
    # A .pt that is not a pickle at all.
    (tmp_path / "zip").mkdir()
    with zipfile.ZipFile(tmp_path / "zip" / "last.pt", "w") as z:
        z.writestr("notes.txt", "no state here")
    with pytest.raises(InputError, match=r"zip/last\.pt: not a training state"):
        load_training_state(tmp_path / "zip" / "last.pt")


def test_resume_state_json_and_tensor_file_replaced_by_pickles(tmp_path, marker):
    sidecar = save_training_state(tmp_path, _tiny_state())
    assert load_training_state(sidecar)["step"] == 3
    text = sidecar.read_text()
    tensors = tmp_path / json.loads(text)["tensors"]["file"]
    # The tensor file replaced by a pickle whose hash the sidecar records.
    _plant(tensors, marker)
    import hashlib

    info = json.loads(text)
    info["tensors"]["sha256"] = hashlib.sha256(tensors.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"state-00000003\.safetensors: not a readable"):
        load_training_state(sidecar)
    # A tag the format does not have (a JSON object can only ever build data).
    tensors.unlink()
    save_training_state(tmp_path, _tiny_state())
    info = json.loads(sidecar.read_text())
    info["state"]["config"] = {"__reduce__": ["os.system", ["touch x"]]}
    sidecar.write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"last\.json: unknown tagged value '__reduce__'"):
        load_training_state(sidecar)
    _plant(sidecar, marker)
    with pytest.raises(InputError, match=r"last\.json: not a training state"):
        load_training_state(sidecar)


def _env() -> dict:
    import egovlpv2_rt

    env = dict(os.environ)
    pkg_root = str(Path(egovlpv2_rt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_train_resume_from_planted_pickle_via_cli(tmp_path, marker):
    from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
    from egovlpv2_rt.train.bpe import train_bpe_tokenizer

    data = tmp_path / "data"
    generate_dataset(data, seed=1, cfg=SynthConfig(num_clips=8, size=32, num_mcq=2))
    texts = [r.clip_text for r in read_egoclip(data / "egoclip.csv")]
    tok = train_bpe_tokenizer(texts, 280, data / "tokenizer.json")
    vocab = RobertaTokenizer.from_tokenizer_json(tok).vocab_size
    out = tmp_path / "run"
    cfg = {
        "model": {
            "preset": "tiny",
            "overrides": {"text": {"vocab_size": vocab}, "fusion": {"vocab_size": vocab}},
        },
        "data": {"root": str(data), "tokenizer": str(tok), "image_size": 32},
        "out_dir": str(out),
        "global_batch_size": 4,
        "max_steps": 2,
        "progress": False,
        "num_threads": 1,
    }
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(json.dumps(cfg))
    planted = _torch_file(out / "checkpoints" / "last.pt", marker, step=1)
    # A subprocess: the trainer sets process-wide torch settings (threads, denormals).
    command = [sys.executable, "-m", "egovlpv2_rt.cli", "train", "--config", str(cfg_path)]
    command += ["--resume", "--device", "cpu"]
    res = subprocess.run(
        command,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    err = res.stderr
    assert res.returncode == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{planted}: refused, reading it would run code from the file" in err
    assert not (out / "model.safetensors").exists()


# -- embedding stores -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["emb.safetensors", "emb.parquet"])
def test_embeddings_store_that_is_a_pickle(tmp_path, marker, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path = _plant(tmp_path / name, marker)
    with pytest.raises(InputError, match=rf"{name}: not an egovlpv2 embeddings file"):
        load_embeddings(path)


def test_faiss_index_and_its_json_as_pickles(tmp_path, marker):
    pytest.importorskip("faiss")
    from egovlpv2_rt.runtime.store import load_faiss_index

    path = _plant(tmp_path / "emb.faiss", marker)
    _plant(tmp_path / "emb.faiss.json", marker)
    with pytest.raises(InputError, match=r"emb\.faiss: not a readable FAISS index"):
        load_faiss_index(path)
    (tmp_path / "emb.faiss.json").write_text('{"ids": []}')
    with pytest.raises(InputError, match=r"emb\.faiss: not a readable FAISS index"):
        load_faiss_index(path)


def test_shard_manifest_that_is_a_pickle(tmp_path, marker):
    path = _plant(tmp_path / "emb.manifest.json", marker)
    with pytest.raises(InputError, match=r"emb\.manifest\.json: not a shard manifest"):
        merge_shards(path)


# -- tokenizer, configs, datasets, exports ---------------------------------------------------


def test_tokenizer_files_that_are_pickles(tmp_path, marker):
    tok = _plant(tmp_path / "a" / "tokenizer.json", marker)
    with pytest.raises(InputError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        RobertaTokenizer.from_tokenizer_json(tok)
    _plant(tmp_path / "b" / "vocab.json", marker)
    _plant(tmp_path / "b" / "merges.txt", marker)
    with pytest.raises(InputError, match=r"vocab\.json, .*merges\.txt: not a valid"):
        RobertaTokenizer.from_directory(tmp_path / "b")


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:pathlib.Path.touch ['{m}']\n",
        "max_steps: !!python/object/apply:os.system ['touch {m}']\n",
        "out_dir: !!python/object/new:pathlib.PosixPath ['{m}']\n",
    ],
)
def test_yaml_train_config_with_python_tags(tmp_path, marker, text):
    pytest.importorskip("yaml")
    path = tmp_path / "exp.yaml"
    path.write_text(text.format(m=marker))
    with pytest.raises(ConfigError, match=r"exp\.yaml: cannot parse .*could not determine"):
        load_train_config(path)


@pytest.mark.parametrize("name", ["exp.json", "exp.yaml"])
def test_train_config_that_is_a_pickle(tmp_path, marker, name):
    pytest.importorskip("yaml")
    with pytest.raises(ConfigError, match=rf"{name}: (cannot parse|not UTF-8 text)"):
        load_train_config(_plant(tmp_path / name, marker))


def test_safetensors_config_metadata_that_is_not_json(tmp_path, marker):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    payload = _pickle_bytes(marker).decode("latin-1")
    save_file({"w": torch.zeros(1)}, str(path), metadata={"egovlpv2_config": payload})
    with pytest.raises(InputError, match=r"model\.safetensors: its 'egovlpv2_config' metadata"):
        load_model(path)


def test_egomcq_and_egoclip_files_that_are_pickles(tmp_path, marker):
    with pytest.raises(MetadataError, match=r"egomcq\.json: not valid JSON"):
        read_egomcq(_plant(tmp_path / "egomcq.json", marker))
    with pytest.raises(MetadataError, match=r"egoclip\.csv: not a UTF-8 tab-separated"):
        read_egoclip(_plant(tmp_path / "egoclip.csv", marker))


def test_export_folder_json_files_that_are_pickles(tmp_path, marker):
    side = _plant(tmp_path / "video_encoder.json", marker)
    with pytest.raises(InputError, match=r"video_encoder\.json: not valid JSON"):
        read_sidecar(side)
    _plant(tmp_path / "export.json", marker)
    with pytest.raises(InputError, match=r"export\.json: not valid JSON"):
        read_manifest(tmp_path)
    from egovlpv2_rt import runtime

    with pytest.raises(EgoVLPv2Error, match=r"export\.json: not valid JSON"):
        runtime.load(tmp_path, device="cpu", backend="onnxruntime")
