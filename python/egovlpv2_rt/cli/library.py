"""``egovlpv2``: embed a library of clips, search it with text, answer multiple-choice
questions, build FAISS indexes, benchmark, and a self-contained demo.

    egovlpv2 demo                                   # the main job, offline, in one command
    egovlpv2 embed --videos DIR_OR_LIST --out emb.safetensors
    egovlpv2 search --embeddings emb.safetensors --query "C picks up the red square"
    egovlpv2 index --embeddings emb.safetensors --out clips.faiss
    egovlpv2 mcq --query "C moves the cup" --candidates a.mp4 b.mp4@2.0:4.5 c.mp4
    egovlpv2 bench --backend torch onnxruntime
    egovlpv2 info

Distributed embedding: ``torchrun --nproc_per_node N -m egovlpv2_rt.cli embed --shard ...``
writes one file per rank plus ``<out>.manifest.json``; ``index``/``search`` read the manifest.
Errors print one line (``egovlpv2: error: ...``) and exit with status 1; set
``EGOVLPV2_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "error_exit", "main", "one_line", "parse_clip_arg", "read_clip_list"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
_MAX_ERROR = 400


# ------------------------------------------------------------------------------ errors


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message with newlines folded, cut at 400 characters;
    exceptions that are not input errors are prefixed with their type."""
    msg = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if isinstance(exc, KeyError) and msg.startswith("'"):
        msg = f"missing key {msg}"
    if not msg:
        msg = type(exc).__name__
    expected = (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError)
    from .video import VideoError

    if not isinstance(exc, (*expected, VideoError)):
        msg = f"{type(exc).__name__}: {msg}"
    if len(msg) > _MAX_ERROR:
        msg = msg[: _MAX_ERROR - 3] + "..."
    return msg


def error_exit(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: <one line>`` on stderr (the traceback too with EGOVLPV2_DEBUG);
    return exit status 1."""
    if os.environ.get("EGOVLPV2_DEBUG"):
        traceback.print_exception(exc)
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return 1


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------------------ clip inputs


_CLIP_RANGE = re.compile(r"^(?P<path>.+)@(?P<start>[0-9.]+):(?P<end>[0-9.]+)$")


def parse_clip_arg(text: str) -> tuple[str, float | None, float | None]:
    """``path`` or ``path@START:END`` (seconds) -> (path, start, end)."""
    m = _CLIP_RANGE.match(text)
    if m:
        start, end = float(m["start"]), float(m["end"])
        if end <= start:
            raise ValueError(f"clip {text!r}: END must be after START")
        return m["path"], start, end
    return text, None, None


def _clip_id(path: str, start: float | None, end: float | None) -> str:
    return path if start is None else f"{path}@{start:g}:{end:g}"


def read_clip_list(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Clips to embed: a folder (every video file below it, whole files, ids = relative
    paths), a ``.csv``/``.tsv`` with a header holding ``path`` (and optionally ``start``,
    ``end``, ``id``), or a text file with one ``path`` or ``path@START:END`` per line (``#``
    comments). Relative paths are resolved against the list's folder. Returns dicts with
    ``id``, ``path``, ``start``, ``end``."""
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file()
                       and p.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        return [{"id": p.relative_to(src).as_posix(), "path": str(p), "start": None,
                 "end": None} for p in files]
    if not src.is_file():
        raise FileNotFoundError(f"--videos: no such file or folder: {src}")
    base = src.parent
    clips: list[dict[str, Any]] = []
    if src.suffix.lower() in (".csv", ".tsv"):
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if src.suffix.lower() == ".tsv" else ",")
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{src}: the header must have a 'path' column, got "
                                 f"{reader.fieldnames}")
            for row_no, row in enumerate(reader, start=2):
                try:
                    start = float(row["start"]) if row.get("start") not in (None, "") else None
                    end = float(row["end"]) if row.get("end") not in (None, "") else None
                except ValueError:
                    raise ValueError(f"{src}, row {row_no}: start/end must be numbers, got "
                                     f"{row.get('start')!r}, {row.get('end')!r}") from None
                path = row["path"]
                if not path:
                    raise ValueError(f"{src}, row {row_no}: empty 'path'")
                clips.append({"id": row.get("id") or _clip_id(path, start, end),
                              "path": str(base / path), "start": start, "end": end})
    else:
        for line_no, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                path, start, end = parse_clip_arg(line)
            except ValueError as exc:
                raise ValueError(f"{src}, line {line_no}: {exc}") from None
            clips.append({"id": _clip_id(path, start, end), "path": str(base / path),
                          "start": start, "end": end})
    if not clips:
        raise ValueError(f"{src}: lists no clips")
    return clips


# ------------------------------------------------------------------------------ shared options


def _add_model_options(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="model file or folder, or an export folder (default: the shipped "
                        "default model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: beside the "
                                                       "checkpoint)")
    if backend:
        p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"),
                       default="torch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if "
                                                   "available)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per clip (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per forward pass")


def _runtime(args: argparse.Namespace, **overrides: Any):
    from .runtime import load

    kwargs = {"device": getattr(args, "device", None),
              "precision": getattr(args, "precision", None),
              "backend": getattr(args, "backend", "torch"),
              "tokenizer": getattr(args, "tokenizer", None),
              "num_frames": getattr(args, "frames", None),
              "video_batch_size": getattr(args, "batch_size", None)}
    kwargs.update(overrides)
    return load(getattr(args, "checkpoint", None), **kwargs)


def _fingerprint(rt) -> dict[str, Any]:
    from .embedding_store import model_fingerprint
    from .export.metadata import file_sha256

    sha = ""
    if rt.files is not None and rt.files.checkpoint is not None:
        sha = file_sha256(rt.files.checkpoint)
    elif rt.files is not None and rt.files.export_dir is not None:
        side = rt.files.export_dir / "video_encoder.json"
        if side.is_file():
            sha = json.loads(side.read_text()).get("source_sha256", "")
    return model_fingerprint(rt.config.to_dict(), sha, num_frames=rt.num_frames,
                             precision=rt.precision)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=float))


def _show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "json", False) and not getattr(args, "no_progress", False)


# ------------------------------------------------------------------------------ embed


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, str(default))
        if not value.isdigit():
            raise ValueError(f"environment variable {name}={value!r} is not an integer")
        return int(value)

    return env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .embedding_store import EmbeddingSet, save_embeddings, shard_path, write_manifest
    from .video import ClipSpec, VideoError

    out = Path(args.out)
    if out.suffix not in (".safetensors", ".parquet"):
        raise ValueError(f"--out {out}: use a .safetensors or .parquet file name")
    clips = read_clip_list(args.videos)
    rank, world, local_rank = _dist_env() if args.shard else (0, 1, 0)
    target = out
    device = args.device
    if args.shard:
        target = shard_path(out, rank, world)
        import torch

        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if str(device) == "cpu":
            # Ranks on one machine share its cores.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
        if rank == 0:
            write_manifest(out, world, len(clips))
        mine = clips[rank::world]
    else:
        mine = clips
    rt = _runtime(args, device=device)
    specs = [ClipSpec(c["path"], c["start"], c["end"]) for c in mine]
    t0 = time.perf_counter()
    rows, kept, failed = [], [], []
    bs = rt.video_batch_size
    from .runtime import _progress

    bar = _progress(len(specs), "embed clips", _show_progress(args))
    try:
        for i in range(0, len(specs), bs):
            chunk = list(range(i, min(i + bs, len(specs))))
            try:
                emb = rt.encode_video([specs[k] for k in chunk])
                rows.append(emb)
                kept += chunk
            except VideoError:
                if not args.skip_bad:
                    raise
                # Find the bad clips of this batch one by one.
                for k in chunk:
                    try:
                        rows.append(rt.encode_video([specs[k]]))
                        kept.append(k)
                    except VideoError as exc:
                        failed.append({"id": mine[k]["id"], "error": one_line(exc)})
            bar.update(len(chunk))
    finally:
        bar.close()
    if not kept:
        raise ValueError("no clip could be embedded" + (f" ({len(failed)} failed; first: "
                                                        f"{failed[0]['error']})" if failed
                                                        else ""))
    data = EmbeddingSet([mine[k]["id"] for k in kept], np.concatenate(rows),
                        [{"path": mine[k]["path"], "start": mine[k]["start"],
                          "end": mine[k]["end"]} for k in kept], _fingerprint(rt))
    save_embeddings(target, data)
    summary = {"out": str(target), "clips": len(kept), "failed": failed, "dim": data.dim,
               "seconds": round(time.perf_counter() - t0, 3), "backend": rt.backend,
               "device": str(rt.device), "rank": rank, "world_size": world}
    if args.json:
        _print_json(summary)
    else:
        print(f"embedded {len(kept)} clips -> {target} ({data.dim}-d, "
              f"{summary['seconds']:.1f} s, {rt.backend} on {rt.device})")
        for f in failed:
            print(f"skipped {f['id']}: {f['error']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ search


def _load_library(path: str):
    """An embeddings file / shard manifest, or a FAISS index (``.faiss``)."""
    from .embedding_store import load_embeddings, load_faiss_index

    if path.endswith(".faiss"):
        return load_faiss_index(path)
    return load_embeddings(path)


def _rank(library, query_emb, k: int):
    from .embedding_store import EmbeddingSet, top_k

    if isinstance(library, EmbeddingSet):
        if query_emb.shape[0] != library.dim:
            raise ValueError(f"query dimension {query_emb.shape[0]} != embeddings dimension "
                             f"{library.dim}: wrong checkpoint for these embeddings")
        return top_k(library.embeddings, query_emb, k)
    return library.search(query_emb, k)


def cmd_search(args: argparse.Namespace) -> int:
    from .embedding_store import check_compatible

    query = args.query.strip()
    if not query:
        raise ValueError("--query is empty; give a text to search for")
    library = _load_library(args.embeddings)
    rt = _runtime(args)
    check_compatible(library.model, _fingerprint(rt), args.embeddings)
    q = rt.encode_text([query])[0]
    idx, scores = _rank(library, q, args.top_k)
    results = [{"rank": r + 1, "id": library.ids[i], **(library.clips[i] or {}),
                "score": float(s)} for r, (i, s) in enumerate(zip(idx.tolist(), scores))]
    if args.rerank != "none" and results:
        from .video import ClipSpec

        specs = []
        for res in results:
            if not res.get("path") or not Path(res["path"]).is_file():
                raise FileNotFoundError(f"--rerank needs the clip videos; {res['id']}: "
                                        f"{res.get('path') or 'no path stored'} not found")
            specs.append(ClipSpec(res["path"], res.get("start"), res.get("end")))
        probs = rt.score(specs, [query] * len(specs))
        for res, p in zip(results, probs):
            res["dual"], res["fusion"] = res["score"], float(p)
            res["score"] = float(p) if args.rerank == "fusion" else res["dual"] + float(p)
        results.sort(key=lambda r: -r["score"])
        for r, res in enumerate(results):
            res["rank"] = r + 1
    if args.json:
        _print_json({"query": query, "results": results})
    else:
        print(f"query: {query}")
        for res in results:
            extra = (f"  (dual {res['dual']:.3f}, fusion {res['fusion']:.3f})"
                     if "fusion" in res else "")
            print(f"{res['rank']:3d}. {res['score']:+.4f}  {res['id']}{extra}")
    return 0


# ------------------------------------------------------------------------------ index


def cmd_index(args: argparse.Namespace) -> int:
    from .embedding_store import build_faiss_index, load_embeddings, merge_shards, save_embeddings

    inputs = args.embeddings
    if len(inputs) == 1:
        data = load_embeddings(inputs[0])
    else:
        data = merge_shards(inputs)
    if args.merged:
        save_embeddings(args.merged, data)
    out = Path(args.out)
    if out.suffix != ".faiss":
        raise ValueError(f"--out {out}: use a .faiss file name")
    build_faiss_index(data, out, kind=args.kind, nlist=args.nlist)
    summary = {"index": str(out), "kind": args.kind, "clips": len(data), "dim": data.dim,
               "merged": args.merged}
    if args.json:
        _print_json(summary)
    else:
        print(f"indexed {len(data)} clips ({data.dim}-d, {args.kind}) -> {out}"
              + (f"; merged embeddings -> {args.merged}" if args.merged else ""))
    return 0


# ------------------------------------------------------------------------------ mcq


def _mcq_from_file(args: argparse.Namespace):
    from .data.egomcq import read_egomcq

    if not args.video_dir:
        raise ValueError("--egomcq needs --video-dir (the folder of <video_uid>.mp4 files)")
    items = read_egomcq(args.egomcq)
    key = args.question if args.question is not None else items[0].key
    match = [it for it in items if it.key == str(key)]
    if not match:
        raise ValueError(f"{args.egomcq}: no question {key!r} (keys {items[0].key}.."
                         f"{items[-1].key})")
    it = match[0]
    vdir = Path(args.video_dir)
    cands = [{"id": f"{c.video_uid}@{c.clip_start:g}:{c.clip_end:g}",
              "path": str(vdir / f"{c.video_uid}.mp4"), "start": c.clip_start,
              "end": c.clip_end, "text": c.clip_text} for c in it.choices]
    return it.text, cands, it.answer


def cmd_mcq(args: argparse.Namespace) -> int:
    from .video import ClipSpec

    answer_key = None
    if args.egomcq:
        query, cands, answer_key = _mcq_from_file(args)
    else:
        if args.query is None or not args.query.strip():
            raise ValueError("--query is empty; give the question text (or --egomcq FILE)")
        if not args.candidates or len(args.candidates) < 2:
            raise ValueError("--candidates: give at least 2 clips (path or path@START:END)")
        query = args.query.strip()
        cands = []
        for c in args.candidates:
            path, start, end = parse_clip_arg(c)
            cands.append({"id": c, "path": path, "start": start, "end": end})
    rt = _runtime(args)
    ans = rt.mcq(query, [ClipSpec(c["path"], c["start"], c["end"]) for c in cands],
                 mode=args.mode)
    rows = []
    for i, c in enumerate(cands):
        row = {"index": i, "id": c["id"], "score": float(ans.scores[i])}
        if ans.dual is not None:
            row["dual"] = float(ans.dual[i])
        if ans.fusion is not None:
            row["fusion"] = float(ans.fusion[i])
        if "text" in c:
            row["text"] = c["text"]
        rows.append(row)
    result = {"query": query, "mode": args.mode, "answer": ans.answer,
              "ranking": ans.ranking(), "candidates": rows}
    if answer_key is not None:
        result["correct_answer"] = answer_key
        result["correct"] = ans.answer == answer_key
    if args.json:
        _print_json(result)
    else:
        print(f"question: {query}  (mode {args.mode})")
        for i in ans.ranking():
            r = rows[i]
            mark = "->" if i == ans.answer else "  "
            truth = " (correct)" if answer_key is not None and i == answer_key else ""
            text = f"  \"{r['text']}\"" if "text" in r else ""
            print(f"{mark} [{i}] {r['score']:+.4f}  {r['id']}{text}{truth}")
    return 0


# ------------------------------------------------------------------------------ bench / info


def cmd_bench(args: argparse.Namespace) -> int:
    from .runtime import benchmark

    rows = []
    for backend in args.backend:
        rt = _runtime(args, backend=backend)
        if args.warmup_graphs:
            rt.warmup()
        cases = [c for c in args.cases if not c.startswith("score") or rt.has_fusion]
        rows += benchmark(rt, cases=cases, repeats=args.repeats)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'case':<12}{'backend':<13}{'device':<9}{'prec':<6}{'median ms':>11}{'min ms':>10}")
    for r in rows:
        print(f"{r['case']:<12}{r['backend']:<13}{r['device']:<9}{r['precision']:<6}"
              f"{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}")
    return 0


def _importable(name: str) -> tuple[bool, str]:
    import importlib

    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return False, one_line(exc)
    return True, str(getattr(mod, "__version__", ""))


def collect_info() -> dict[str, Any]:
    """Build facts, available backends and devices (what ``egovlpv2 info`` prints)."""
    import torch

    from ._extension import build_info
    from ._version import __version__
    from .runtime import default_model_dir

    backends: dict[str, Any] = {"torch": {"available": True, "version": torch.__version__}}
    ok, ver = _importable("onnxruntime")
    backends["onnxruntime"] = {"available": ok, "version" if ok else "error": ver}
    if ok:
        import onnxruntime

        backends["onnxruntime"]["providers"] = onnxruntime.get_available_providers()
    ok, ver = _importable("tensorrt")
    backends["tensorrt"] = {"available": ok, "version" if ok else "error": ver}
    extras = {}
    for name in ("onnx", "onnxscript", "faiss", "pyarrow", "av", "torchcodec",
                 "nvidia.dali"):
        ok, ver = _importable(name)
        extras[name] = ver if ok else None
    devices = {"cuda_available": torch.cuda.is_available(), "cpu_threads":
               torch.get_num_threads()}
    if torch.cuda.is_available():
        devices["cuda"] = [torch.cuda.get_device_name(i)
                           for i in range(torch.cuda.device_count())]
    d = default_model_dir()
    return {"version": __version__, "build": build_info(), "backends": backends,
            "packages": extras, "devices": devices,
            "default_model": {"path": str(d), "present": (d / "model.safetensors").is_file()}}


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        _print_json(info)
        return 0
    b = info["build"]
    print(f"egovlpv2-rt {info['version']}  build: {b.get('build')}  torch "
          f"{b.get('torch_runtime')}  (binaries target torch >= "
          f"{b.get('torch_target_version', '?')})")
    if b.get("error"):
        print(f"  extension: {b['error']}")
    else:
        print(f"  CPU kernels: {b.get('cpu_isa')}; CUDA kernels loaded: "
              f"{b.get('cuda_kernels_loaded')}")
    for name, v in info["backends"].items():
        state = (f"yes {v.get('version', '')}".strip() if v["available"]
                 else f"no ({v.get('error')})")
        extra = f"  providers: {', '.join(v['providers'])}" if v.get("providers") else ""
        print(f"  backend {name:<12} {state}{extra}")
    pk = ", ".join(f"{k} {v}" if v else f"{k} -" for k, v in info["packages"].items())
    print(f"  packages: {pk}")
    dv = info["devices"]
    print(f"  devices: cpu ({dv['cpu_threads']} threads)"
          + (f", cuda: {', '.join(dv['cuda'])}" if dv.get("cuda") else ", no CUDA device"))
    dm = info["default_model"]
    print(f"  default model: {dm['path']} ({'present' if dm['present'] else 'missing'})")
    return 0


# ------------------------------------------------------------------------------ demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate example clips, embed them, answer a text query and an EgoMCQ question."""
    import numpy as np

    from .data.egoclip import read_egoclip
    from .data.egomcq import INTER, read_egomcq
    from .data.synthetic import SynthConfig, generate_dataset
    from .video import ClipSpec

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="egovlpv2-demo-"))
    quiet = args.json
    t0 = time.perf_counter()
    if not quiet:
        print(f"1/4 writing example clips to {work} ...", flush=True)
    # Six actions per video leave enough distinct narrations for intra-video questions.
    paths = generate_dataset(work, args.seed, SynthConfig(num_clips=args.clips,
                                                          clips_per_video=6, size=64,
                                                          num_mcq=4))
    records = read_egoclip(paths["egoclip"])
    questions = read_egomcq(paths["egomcq"])
    if not quiet:
        print(f"2/4 loading the model ({args.checkpoint or 'shipped default'}, "
              f"{args.backend}) ...", flush=True)
    rt = _runtime(args)
    specs = [ClipSpec(str(paths["videos"] / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
             for r in records]
    ids = [f"{r.video_uid}@{r.clip_start:g}:{r.clip_end:g}" for r in records]
    if not quiet:
        print(f"3/4 embedding {len(specs)} clips ...", flush=True)
    emb = rt.encode_video(specs, normalize=True, progress=not quiet)
    rng = np.random.default_rng(args.seed)
    target = int(rng.integers(len(records)))
    query = args.query or records[target].clip_text
    q = rt.encode_text([query], normalize=True)[0]
    sims = emb @ q
    order = np.argsort(-sims, kind="stable")[: args.top_k]
    ranked = [{"rank": r + 1, "id": ids[i], "text": records[i].clip_text,
               "score": float(sims[i]), "match": records[i].clip_text == query}
              for r, i in enumerate(order.tolist())]
    # Prefer an intra-video question: it needs the actions, not only the objects.
    question = next((x for x in questions if x.type != INTER), questions[0])
    if not quiet:
        print("4/4 answering an EgoMCQ question ...", flush=True)
    cand_specs = [ClipSpec(str(paths["videos"] / f"{c.video_uid}.mp4"), c.clip_start,
                           c.clip_end) for c in question.choices]
    mode = "ensemble" if rt.has_fusion else "dual"
    ans = rt.mcq(question.text, cand_specs, mode=mode)
    result = {
        "folder": str(work),
        "model": str(rt.files.checkpoint if rt.files and rt.files.checkpoint else
                     rt.files.export_dir if rt.files else ""),
        "backend": rt.backend, "device": str(rt.device),
        "search": {"query": query, "results": ranked},
        "mcq": {"question": question.text, "type": "inter" if question.type == INTER
                else "intra", "mode": mode, "answer": ans.answer,
                "correct_answer": question.answer, "correct": ans.answer == question.answer,
                "candidates": [{"index": i, "text": c.clip_text, "score": float(ans.scores[i])}
                               for i, c in enumerate(question.choices)]},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if quiet:
        _print_json(result)
        return 0
    print(f"\nsearch: \"{query}\" over {len(specs)} clips")
    for r in ranked:
        print(f"  {r['rank']}. {r['score']:+.3f}  {r['id']:<24} \"{r['text']}\""
              + ("   <- the query's clip" if r["match"] else ""))
    m = result["mcq"]
    print(f"\nEgoMCQ ({m['type']}-video, {mode}): \"{m['question']}\"")
    for i in ans.ranking():
        c = m["candidates"][i]
        mark = "->" if i == ans.answer else "  "
        truth = "   (correct answer)" if i == question.answer else ""
        print(f"  {mark} [{i}] {c['score']:+.3f}  \"{c['text']}\"{truth}")
    print(f"\nanswer {'correct' if m['correct'] else 'wrong'}; done in {result['seconds']} s "
          f"({rt.backend} on {rt.device}). Files: {work}")
    return 0


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="egovlpv2", description="EgoVLPv2 runtime: embed, search, answer, "
                "index, benchmark.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("demo", help="generate example clips, embed them, answer a query and "
                       "an EgoMCQ question (offline)")
    _add_model_options(s)
    s.add_argument("--out", default=None, help="folder for the clips (default: a temp folder)")
    s.add_argument("--query", default=None, help="text query (default: a clip's narration)")
    s.add_argument("--clips", type=int, default=30,
                   help="example clips (6 per video, at least 5 videos)")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("embed", help="embed video clips into an embeddings file")
    s.add_argument("--videos", required=True,
                   help="a folder of videos, or a clip list (.txt: path[@START:END] per line; "
                        ".csv/.tsv with path[,start,end,id])")
    s.add_argument("--out", required=True, help="embeddings file (.safetensors or .parquet)")
    _add_model_options(s)
    s.add_argument("--shard", action="store_true",
                   help="under torchrun: embed this rank's share into <out>.shard-R-of-W and "
                        "write <out>.manifest.json")
    s.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable clips (reported) instead of stopping")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("search", help="rank clips for a text query")
    s.add_argument("--embeddings", required=True,
                   help="embeddings file, shard manifest, or FAISS index (.faiss)")
    s.add_argument("--query", required=True)
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--rerank", choices=("none", "fusion", "ensemble"), default="none",
                   help="re-rank the top-k with the fusion encoder (reads the clips)")
    _add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("index", help="build a FAISS index (merging shard files)")
    s.add_argument("--embeddings", required=True, nargs="+",
                   help="embeddings file(s) or a shard manifest")
    s.add_argument("--out", required=True, help="index file (.faiss; ids in <out>.json)")
    s.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat")
    s.add_argument("--nlist", type=int, default=None, help="ivf cells (default ~sqrt(N))")
    s.add_argument("--merged", default=None,
                   help="also write the merged embeddings to this file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("mcq", help="answer a multiple-choice question over candidate clips")
    s.add_argument("--query", default=None, help="question text")
    s.add_argument("--candidates", nargs="+", default=None,
                   help="candidate clips: path or path@START:END")
    s.add_argument("--egomcq", default=None, help="or: an egomcq.json file ...")
    s.add_argument("--video-dir", default=None, help="... its videos folder ...")
    s.add_argument("--question", default=None, help="... and a question key (default: first)")
    s.add_argument("--mode", choices=("dual", "fusion", "ensemble"), default="ensemble")
    _add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_mcq)

    s = sub.add_parser("bench", help="latency of the runtime on synthetic inputs")
    _add_model_options(s, backend=False)
    s.add_argument("--backend", nargs="+", default=["torch"],
                   choices=("torch", "onnxruntime", "tensorrt"))
    s.add_argument("--cases", nargs="+", default=["text_b1", "video_b1", "video_b8"],
                   help="text_bN, video_bN, score_bN")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--warmup-graphs", action="store_true",
                   help="capture every shape bucket first (CUDA graphs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("info", help="build facts, available backends, devices")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    try:
        from .cli_train import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("egovlpv2: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, no traceback
        return error_exit("egovlpv2", exc)


if __name__ == "__main__":
    sys.exit(main())
