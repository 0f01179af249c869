"""Property tests of the parsers a user feeds by hand: clip specs, clip lists, model and
training configs, and the query text path. Each property: the input gives a valid result (an
invariant is checked) or the package's own error (``EgoVLPv2Error``), never another exception.

Deterministic (derandomized, fixed example counts) so the file runs the same every time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _tiny_assets import tiny_config, tiny_model_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from egovlpv2_rt.config import ModelConfig
from egovlpv2_rt.errors import EgoVLPv2Error
from egovlpv2_rt.runtime.inputs import check_texts
from egovlpv2_rt.tokenizer import RobertaTokenizer
from egovlpv2_rt.train.config import load_train_config, train_config_from_dict
from egovlpv2_rt.video.clip_list import parse_clip_arg, read_clip_list

SETTINGS = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that looks like what people type into a clip spec: paths, '@', ':', digits, signs.
SPEC_ALPHABET = st.sampled_from([*"ab./@:-+0123456789eE \tx_\\", "nan", "inf", "é"])
spec_text = st.one_of(
    st.lists(SPEC_ALPHABET, max_size=20).map("".join),
    st.builds(
        lambda p, a, b: f"{p}@{a}:{b}",
        st.sampled_from(["a.mp4", "", "dir/b.mkv", "x@y.mp4"]),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4)),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4)),
    ),
    st.text(max_size=30),
    st.builds(
        lambda p, a, b: f"{p}@{a}:{b}",
        st.sampled_from(["a.mp4", "v/c.mp4"]),
        st.integers(-3, 20),
        st.one_of(st.integers(-3, 20), st.floats(0, 30).map(repr)),
    ),
)


def _check_spec_result(text: str, result: tuple[str, float | None, float | None]) -> None:
    path, start, end = result
    assert isinstance(path, str) and path
    if start is None:
        assert end is None and path == text
    else:
        assert end is not None
        assert math.isfinite(start) and math.isfinite(end)
        assert 0 <= start < end
        assert text.startswith(path + "@")


@SETTINGS
@given(spec_text)
def test_clip_spec_parses_or_refuses(text):
    try:
        result = parse_clip_arg(text)
    except EgoVLPv2Error as exc:
        assert repr(text) in str(exc)  # the error names the spec
        return
    _check_spec_result(text, result)


@SETTINGS
@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_clip_spec_round_trips_valid_ranges(start, end):
    text = f"clip.mp4@{start!r}:{end!r}"
    if end <= start:
        with pytest.raises(EgoVLPv2Error, match="must be after START"):
            parse_clip_arg(text)
    else:
        assert parse_clip_arg(text) == ("clip.mp4", start, end)


# ------------------------------------------------------------------------------ clip lists

line = st.one_of(spec_text, st.sampled_from(["# comment", "", "a.mp4", "a.mp4@1:2"]))
cell = st.one_of(
    st.text(max_size=8),
    st.floats().map(repr),
    st.sampled_from(["", "1", "2.5", "-1", "nan", "a.mp4", '"q,uoted"', "\x00"]),
)


@st.composite
def table(draw, sep: str) -> str:
    header = draw(
        st.lists(st.sampled_from(["path", "start", "end", "id", "x", ""]), min_size=1, max_size=5)
    )
    rows = draw(st.lists(st.lists(cell, max_size=6), max_size=5))
    return "\n".join(sep.join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n"]))


list_file = st.one_of(
    st.tuples(st.just(".txt"), st.lists(line, max_size=6).map("\n".join)),
    st.tuples(st.just(".csv"), table(",")),
    st.tuples(st.just(".tsv"), table("\t")),
    st.tuples(st.sampled_from([".txt", ".csv", ".tsv"]), st.text(max_size=60)),
)


@SETTINGS
@given(list_file, st.binary(max_size=6))
@example(file=(".csv", "path,start\n0,0"), junk=b"")  # found by hypothesis: start, no end
@example(file=(".tsv", "path\tend\nv.mp4\t2"), junk=b"")
def test_clip_list_reads_or_refuses(tmp_path, file, junk):
    suffix, content = file
    path = tmp_path / f"clips{suffix}"
    # Text as typed, or with bytes that may not be UTF-8 appended.
    data = content.encode("utf-8", "surrogatepass") + junk
    path.write_bytes(data)
    try:
        clips = read_clip_list(path)
    except EgoVLPv2Error as exc:
        assert str(path) in str(exc)  # the error names the file
        return
    assert clips
    for c in clips:
        assert set(c) == {"id", "path", "start", "end"}
        assert Path(c["path"]).is_absolute()  # resolved against the list's folder
        for t in (c["start"], c["end"]):
            assert t is None or (math.isfinite(t) and t >= 0)
        if c["start"] is not None and c["end"] is not None:
            assert c["start"] < c["end"]


# ------------------------------------------------------------------------------ configs

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(),
    st.text(max_size=6),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def plausible(default: object) -> st.SearchStrategy:
    """Values a person might write for a field whose default is ``default``: the default, a
    nearby value of its type, the same value spelled as another type, or any JSON value."""
    if isinstance(default, bool):
        near: st.SearchStrategy = st.booleans()
    elif isinstance(default, int):
        near = st.integers(-2, 2 * default + 2)
    elif isinstance(default, float):
        near = st.floats(-1.0, 2 * default + 1.0)
    else:
        near = st.just(default)
    other = st.sampled_from(
        [
            str(default),
            str(default).lower(),
            float(default) if isinstance(default, (int, float)) else default,
        ]
    )
    return st.one_of(st.just(default), near, near, other, json_value)


@st.composite
def mutated_model_dict(draw) -> dict:
    """The tiny config with a few fields replaced by values a person might write (or arbitrary
    JSON values, or unknown keys)."""
    data = tiny_config().to_dict()
    for _ in range(draw(st.integers(0, 2))):
        section = draw(st.sampled_from([None, "video", "text", "fusion", "loss"]))
        target = data if section is None else data[section]
        key = draw(st.one_of(st.sampled_from(sorted(target)), st.text(max_size=5)))
        target[key] = draw(plausible(target.get(key)))
    return data


@SETTINGS
@given(st.one_of(mutated_model_dict(), json_value))
def test_model_config_from_dict_builds_or_refuses(data):
    try:
        cfg = ModelConfig.from_dict(data, where="config.json")
    except EgoVLPv2Error as exc:
        assert str(exc).startswith("config.json: ")
        return
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.video.num_frames >= 1 and cfg.text.max_text_length >= 1
    assert isinstance(cfg.video.qkv_bias, bool)


@SETTINGS
@given(st.text(max_size=80))
def test_model_config_from_json_text(text):
    try:
        cfg = ModelConfig.from_json(text, where="config.json")
    except EgoVLPv2Error as exc:
        assert str(exc).startswith("config.json: ")
        return
    assert cfg == ModelConfig.from_json(cfg.to_json())


TRAIN_KEYS = {
    None: ["max_steps", "global_batch_size", "seed", "amp", "deterministic", "init_scale"],
    "data": ["num_frames", "image_size", "max_text_length", "sampling", "backend", "neg_seconds"],
    "optim": ["lr", "betas", "warmup_steps", "min_lr_ratio", "eps"],
    "loss": ["preset", "gamma", "mlm_stop_step", "use_verb"],
    "eval": ["batch_size", "every_steps"],
    "model": ["preset", "overrides", "config"],
}


TRAIN_DEFAULTS = train_config_from_dict({}, "defaults").to_dict()


@st.composite
def train_dict(draw) -> dict:
    data: dict = {"max_steps": 3, "data": {"num_frames": 2}}
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(sorted(TRAIN_KEYS, key=str)))
        target = data if section is None else data.setdefault(section, {})
        defaults = TRAIN_DEFAULTS if section is None else TRAIN_DEFAULTS[section]
        key = draw(st.one_of(st.sampled_from(TRAIN_KEYS[section]), st.text(max_size=4)))
        target[key] = draw(plausible(defaults.get(key)))
    return data


@SETTINGS
@given(st.one_of(train_dict(), json_value))
def test_train_config_from_dict_builds_or_refuses(data):
    try:
        cfg = train_config_from_dict(data, "exp.json")
    except EgoVLPv2Error as exc:
        assert str(exc).startswith("exp.json: ")
        return
    assert cfg.max_steps >= 1 and cfg.data.num_frames >= 1 and cfg.data.max_text_length >= 2
    assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
    cfg.model.build()


@SETTINGS
@given(st.sampled_from([".json", ".yaml"]), st.one_of(st.text(max_size=80), st.binary(max_size=40)))
def test_train_config_file_text(tmp_path, suffix, content):
    path = tmp_path / f"exp{suffix}"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    try:
        load_train_config(path)
    except EgoVLPv2Error as exc:
        assert str(exc).startswith(f"{path}: ")


# ------------------------------------------------------------------------------ query text


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> RobertaTokenizer:
    path = tiny_model_dir(tmp_path_factory) / "tokenizer.json"
    return RobertaTokenizer.from_tokenizer_json(path, max_length=16)


query = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=400),
    st.integers(0, 60).map(lambda n: " ".join(["word"] * n)),
)


@SETTINGS
@given(query, st.integers(min_value=-2, max_value=40))
def test_tokenizer_encodes_or_refuses(tokenizer, text, max_length):
    try:
        out = tokenizer([text], max_length=max_length, padding="max_length")
    except EgoVLPv2Error:
        assert max_length < 2 or not _is_utf8(text)
        return
    assert _is_utf8(text) and max_length >= 2
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (1, max_length)
    n = int(mask.sum())
    assert 2 <= n <= max_length and mask[0, :n].all() and not mask[0, n:].any()
    assert ids[0, 0] == tokenizer.bos_token_id and ids[0, n - 1] == tokenizer.eos_token_id
    assert (ids[0, n:] == tokenizer.pad_token_id).all()


@SETTINGS
@given(st.lists(query, min_size=0, max_size=4))
def test_runtime_text_check(texts):
    try:
        out = check_texts(texts, "texts")
    except EgoVLPv2Error:
        assert not texts or any(not t.strip() or not _is_utf8(t) for t in texts)
        return
    assert out == list(texts)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
