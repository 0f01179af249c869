"""``egovlpv2`` commands over a library of clips: embed, search, index, mcq, bench, info.

    egovlpv2 embed --videos DIR_OR_LIST --out emb.safetensors
    egovlpv2 search --embeddings emb.safetensors --query "C picks up the red square"
    egovlpv2 index --embeddings emb.safetensors --out clips.faiss
    egovlpv2 mcq --query "C moves the cup" --candidates a.mp4 b.mp4@2.0:4.5 c.mp4
    egovlpv2 bench --backend torch onnxruntime
    egovlpv2 info

Distributed embedding: ``torchrun --nproc_per_node N -m egovlpv2_rt.cli embed --shard ...``
writes one file per rank plus ``<out>.manifest.json``; ``index``/``search`` read the manifest.

``embed`` checks its options, the clip list (duplicate ids, missing files) and the output folder
before the first clip, holds a lock on its output (a second job writing it is refused), writes
part files as it goes (``<out>.parts/``, see :mod:`egovlpv2_rt.runtime.embed_parts`) and with
``--resume`` continues from them to the store an uninterrupted run writes. ``index`` checks
every argument before it writes anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._extension import build_info
from .._version import __version__
from ..data.egomcq import read_egomcq
from ..errors import InputError
from ..files import exclusive_output
from ..progress import progress_bar
from ..runtime import Runtime, benchmark, default_model_dir
from ..runtime.embed_parts import EmbedParts, clip_list_sha256
from ..runtime.store import (
    SUFFIXES,
    EmbeddingSet,
    FaissIndex,
    build_faiss_index,
    check_compatible,
    load_embedding_errors,
    load_embeddings,
    load_faiss_index,
    merge_shards,
    save_embeddings,
    shard_path,
    top_k,
    validate_index_options,
    write_manifest,
)
from ..video import ClipSpec
from ..video.clip_list import parse_clip_arg, read_clip_list
from .common import (
    add_model_options,
    add_ray_options,
    bench_case,
    clip_spec,
    one_line,
    positive_float,
    positive_int,
    print_json,
    ray_options_from_args,
    runtime_fingerprint,
    runtime_from_args,
    runtime_load_kwargs,
    show_progress,
    text_arg,
)

__all__ = ["add_subcommands", "collect_info"]


# ------------------------------------------------------------------------------ embed


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, str(default))
        if not value.isdigit():
            raise ValueError(f"environment variable {name}={value!r} is not an integer")
        return int(value)

    return env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)


def _check_unique_ids(clips: list[dict[str, Any]], source: str) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(clips):
        if c["id"] in seen:
            raise InputError(
                f"--videos {source}: clip id {c['id']!r} appears twice (clips {seen[c['id']] + 1}"
                f" and {i + 1}); every clip needs its own id"
            )
        seen[c["id"]] = i


def _check_clip_files(clips: list[dict[str, Any]]) -> None:
    missing = [
        c["path"] for c in clips if not os.path.exists(c["path"]) or os.path.isdir(c["path"])
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"clip file not found: {missing[0]}{more}; fix the list or pass --skip-bad"
        )


def _check_writable(target: Path) -> None:
    """Create ``target``'s folder and a temporary file in it, so a folder that cannot be
    written fails now rather than after the clips are encoded."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"--out {target}: cannot write in the folder {folder} ({exc.strerror or exc})"
        ) from None


def cmd_embed(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _embed_ray(args)
    # Everything that can be checked is checked before the first clip is encoded.
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".parquet"):
        raise InputError(f"--out {out}: use a .safetensors or .parquet file name")
    clips = read_clip_list(args.videos)
    for c in clips:  # the job's identity and the store do not depend on the working directory
        c["path"] = os.path.abspath(c["path"])
    _check_unique_ids(clips, str(args.videos))
    rank, world, local_rank = _dist_env() if args.shard else (0, 1, 0)
    target = shard_path(out, rank, world) if args.shard else out
    mine = clips[rank::world]
    if not args.skip_bad:
        _check_clip_files(mine)
    _check_writable(target)
    with exclusive_output(target, what="embeddings file"):
        return _embed_locked(args, out, target, clips, mine, rank, world, local_rank)


def _embed_ray(args: argparse.Namespace) -> int:
    """``embed --engine ray``: the clip list on a Ray cluster into an embeddings folder."""
    from ..runtime.ray_engine import embed_with_ray, import_ray

    out = Path(args.out)
    if out.suffix in (".safetensors", ".parquet"):
        raise InputError(
            f"--out {out}: --engine ray writes a folder of parquet parts; give a folder name"
        )
    if args.shard:
        raise InputError("--shard is torchrun's split; --engine ray schedules the clips itself")
    import_ray()  # the one-line message before any work
    options = ray_options_from_args(
        args,
        decode_cpus=args.decode_cpus,
        batch_size=args.batch_size or 8,
        decode_in_actor=args.decode_in_actor,
        batches_per_call=args.batches_per_call,
        part_size=args.part_size,
    )
    clips = read_clip_list(args.videos)
    for c in clips:
        c["path"] = os.path.abspath(c["path"])
    _check_unique_ids(clips, str(args.videos))
    # The driver loads the model on the CPU once, for the decoding settings and the fingerprint
    # (the actors load their own on their device).
    rt = runtime_from_args(args, device="cpu")
    load_kwargs = runtime_load_kwargs(args, video_batch_size=options.batch_size)
    bar = progress_bar(len(clips), "embed clips (ray)", show_progress(args))
    try:
        res = embed_with_ray(
            clips,
            out,
            checkpoint=args.checkpoint,
            load_kwargs=load_kwargs,
            decoder=rt.clip_decoder,
            fingerprint=runtime_fingerprint(rt),
            options=options,
            resume=args.resume,
            progress=bar,
        )
    finally:
        bar.close()
    errors = load_embedding_errors(out)
    summary = {
        "out": str(out),
        "engine": "ray",
        "clips": len(clips),
        "embedded": res.embedded,
        "failed": [{"id": e["id"], "error": e["error"]} for e in errors],
        "resumed_from": res.resumed,
        "computed": res.computed,
        "seconds": round(res.seconds, 3),
        "actor_pids": res.actor_pids,
    }
    again = f"; {res.resumed} clips were already there" if res.resumed else ""
    line = (
        f"embedded {res.embedded} clips -> {out}/ ({res.computed} computed on Ray, "
        f"{summary['seconds']:.1f} s{again})"
    )
    _report_embed(args, summary, line, errors)
    return 0


def _report_embed(
    args: argparse.Namespace, summary: dict[str, Any], line: str, failed: list[dict[str, Any]]
) -> None:
    """An embed job's summary: JSON, or its line and one stderr line per skipped clip."""
    if args.json:
        print_json(summary)
        return
    print(line)
    for f in failed:
        print(f"skipped {f['id']}: {f['error']}", file=sys.stderr)


def _embed_locked(
    args: argparse.Namespace,
    out: Path,
    target: Path,
    clips: list[dict[str, Any]],
    mine: list[dict[str, Any]],
    rank: int,
    world: int,
    local_rank: int,
) -> int:
    device = args.device
    if args.shard:
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if str(device) == "cpu":
            # Ranks on one machine share its cores.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    rt = runtime_from_args(args, device=device)
    fingerprint = runtime_fingerprint(rt)
    bs = rt.video_batch_size
    identity = {
        "clips_sha256": clip_list_sha256(mine),
        "clips": len(mine),
        "model": fingerprint,
        "backend": rt.backend,
        "device_type": str(rt.device).split(":")[0],
        "batch_size": bs,
        "rank": rank,
        "world_size": world,
    }
    parts = EmbedParts(target, identity, resume=args.resume)
    try:
        return _embed_parts(args, rt, out, target, clips, mine, parts, rank, world)
    except BaseException:
        if not parts.parts:  # nothing saved: leave no folder that blocks the next run
            parts.remove()
        raise


def _embed_parts(
    args: argparse.Namespace,
    rt: Runtime,
    out: Path,
    target: Path,
    clips: list[dict[str, Any]],
    mine: list[dict[str, Any]],
    parts: EmbedParts,
    rank: int,
    world: int,
) -> int:
    bs = rt.video_batch_size
    skipped = parts.results()[2]
    if skipped and not args.skip_bad:
        # Parts of a --skip-bad run left clips out; without it those clips must stop the job.
        raise InputError(
            f"{parts.dir}: the parts skipped {len(skipped)} clip(s) ({skipped[0]['id']}: "
            f"{skipped[0]['error']}); pass --skip-bad to continue, or remove the folder"
        )
    if args.shard and rank == 0:
        write_manifest(out, world, len(clips))
    specs = [ClipSpec(c["path"], c["start"], c["end"]) for c in mine]
    # A part holds whole batches, so a resumed job forms the same batches as an uninterrupted one.
    part_clips = bs * max(1, -(-args.part_size // bs))
    t0 = time.perf_counter()
    resumed = parts.done
    bar = progress_bar(len(specs), "embed clips", show_progress(args))
    bar.update(resumed)
    try:
        for p0 in range(resumed, len(specs), part_clips):
            p1 = min(p0 + part_clips, len(specs))
            rows, kept, failed = _embed_range(rt, specs, mine, p0, p1, bs, args.skip_bad, bar)
            parts.add(p1, rows, kept, failed)
    finally:
        bar.close()
    kept_all, emb, failed_all = parts.results()
    fingerprint = parts.identity["model"]
    if emb is None:
        parts.remove()
        raise ValueError(
            "no clip could be embedded"
            + (
                f" ({len(failed_all)} failed; first: {failed_all[0]['error']})"
                if failed_all
                else ""
            )
        )
    data = EmbeddingSet(
        [mine[k]["id"] for k in kept_all],
        emb,
        [
            {"path": mine[k]["path"], "start": mine[k]["start"], "end": mine[k]["end"]}
            for k in kept_all
        ],
        fingerprint,
    )
    save_embeddings(target, data)
    parts.remove()
    summary = {
        "out": str(target),
        "clips": len(kept_all),
        "failed": failed_all,
        "resumed_from": resumed,
        "dim": data.dim,
        "seconds": round(time.perf_counter() - t0, 3),
        "backend": rt.backend,
        "device": str(rt.device),
        "rank": rank,
        "world_size": world,
    }
    again = f"; {resumed} clips resumed from parts" if resumed else ""
    line = (
        f"embedded {len(kept_all)} clips -> {target} ({data.dim}-d, "
        f"{summary['seconds']:.1f} s, {rt.backend} on {rt.device}{again})"
    )
    _report_embed(args, summary, line, failed_all)
    return 0


def _embed_range(
    rt: Runtime,
    specs: list[ClipSpec],
    mine: list[dict[str, Any]],
    p0: int,
    p1: int,
    bs: int,
    skip_bad: bool,
    bar: Any,
) -> tuple[list[np.ndarray], list[int], list[dict[str, str]]]:
    """Encode clips ``[p0, p1)`` in batches of ``bs``, decoding the next batch while the model
    runs (:meth:`Runtime.iter_encode_video`): (embedding arrays, their list positions, the
    failed clips). A clip that cannot be decoded is reported and skipped with ``skip_bad``."""
    rows: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[dict[str, str]] = []
    for batch in rt.iter_encode_video(specs[p0:p1], batch_size=bs, skip_bad=skip_bad):
        if batch.embeddings is not None:
            rows.append(batch.embeddings.numpy())
            kept += [p0 + k for k in batch.positions]
        failed += [{"id": mine[p0 + k]["id"], "error": one_line(exc)} for k, exc in batch.failed]
        bar.update(len(batch.positions) + len(batch.failed))
    return rows, kept, failed


# ------------------------------------------------------------------------------ search


def _load_library(path: str) -> EmbeddingSet | FaissIndex:
    """An embeddings file / shard manifest, or a FAISS index (``.faiss``)."""
    if path.endswith(".faiss"):
        return load_faiss_index(path)
    return load_embeddings(path)


def _rank(
    library: EmbeddingSet | FaissIndex, query_emb: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(library, EmbeddingSet):
        if query_emb.shape[0] != library.dim:
            raise ValueError(
                f"query dimension {query_emb.shape[0]} != embeddings dimension "
                f"{library.dim}: wrong checkpoint for these embeddings"
            )
        return top_k(library.embeddings, query_emb, k)
    return library.search(query_emb, k)


def cmd_search(args: argparse.Namespace) -> int:
    query = args.query.strip()  # not blank: checked by the parser (text_arg)
    library = _load_library(args.embeddings)
    rt = runtime_from_args(args)
    check_compatible(library.model, runtime_fingerprint(rt), args.embeddings)
    q = rt.encode_text([query])[0]
    idx, scores = _rank(library, q, args.top_k)
    results = [
        {"rank": r + 1, "id": library.ids[i], **(library.clips[i] or {}), "score": float(s)}
        for r, (i, s) in enumerate(zip(idx.tolist(), scores, strict=True))
    ]
    if args.rerank != "none" and results:
        specs = []
        for res in results:
            if not res.get("path") or not Path(res["path"]).is_file():
                raise FileNotFoundError(
                    f"--rerank needs the clip videos; {res['id']}: "
                    f"{res.get('path') or 'no path stored'} not found"
                )
            specs.append(ClipSpec(res["path"], res.get("start"), res.get("end")))
        probs = rt.score(specs, [query] * len(specs))
        for res, p in zip(results, probs, strict=True):
            res["dual"], res["fusion"] = res["score"], float(p)
            res["score"] = float(p) if args.rerank == "fusion" else res["dual"] + float(p)
        results.sort(key=lambda r: -r["score"])
        for r, res in enumerate(results):
            res["rank"] = r + 1
    if args.json:
        print_json({"query": query, "results": results})
    else:
        print(f"query: {query}")
        for res in results:
            extra = (
                f"  (dual {res['dual']:.3f}, fusion {res['fusion']:.3f})" if "fusion" in res else ""
            )
            print(f"{res['rank']:3d}. {res['score']:+.4f}  {res['id']}{extra}")
    return 0


# ------------------------------------------------------------------------------ index


def cmd_index(args: argparse.Namespace) -> int:
    # Every argument is checked before anything is written.
    out = Path(args.out)
    if out.suffix != ".faiss":
        raise InputError(f"--out {out}: use a .faiss file name")
    if args.merged and Path(args.merged).suffix not in SUFFIXES:
        raise InputError(f"--merged {args.merged}: use a .safetensors or .parquet file name")
    if args.merged and Path(args.merged).resolve() == out.resolve():
        raise InputError(f"--merged {args.merged}: the same file as --out")
    inputs = args.embeddings
    data = load_embeddings(inputs[0]) if len(inputs) == 1 else merge_shards(inputs)
    validate_index_options(args.kind, args.nlist, len(data), out)
    with exclusive_output(out, what="index"):
        if args.merged:
            with exclusive_output(args.merged, what="embeddings file"):
                save_embeddings(args.merged, data)
        build_faiss_index(data, out, kind=args.kind, nlist=args.nlist)
    summary = {
        "index": str(out),
        "kind": args.kind,
        "clips": len(data),
        "dim": data.dim,
        "merged": args.merged,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"indexed {len(data)} clips ({data.dim}-d, {args.kind}) -> {out}"
            + (f"; merged embeddings -> {args.merged}" if args.merged else "")
        )
    return 0


# ------------------------------------------------------------------------------ mcq


def _mcq_from_file(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]], int]:
    if not args.video_dir:
        raise ValueError("--egomcq needs --video-dir (the folder of <video_uid>.mp4 files)")
    items = read_egomcq(args.egomcq)
    key = args.question if args.question is not None else items[0].key
    match = [it for it in items if it.key == str(key)]
    if not match:
        raise ValueError(
            f"{args.egomcq}: no question {key!r} (keys {items[0].key}..{items[-1].key})"
        )
    it = match[0]
    vdir = Path(args.video_dir)
    cands = [
        {
            "id": f"{c.video_uid}@{c.clip_start:g}:{c.clip_end:g}",
            "path": str(vdir / f"{c.video_uid}.mp4"),
            "start": c.clip_start,
            "end": c.clip_end,
            "text": c.clip_text,
        }
        for c in it.choices
    ]
    return it.text, cands, it.answer


def cmd_mcq(args: argparse.Namespace) -> int:
    answer_key = None
    if args.egomcq:
        query, cands, answer_key = _mcq_from_file(args)
    else:
        if args.query is None:  # a blank one is refused by the parser (text_arg)
            raise ValueError("--query: give the question text (or --egomcq FILE)")
        if not args.candidates or len(args.candidates) < 2:
            raise ValueError("--candidates: give at least 2 clips (path or path@START:END)")
        query = args.query.strip()
        cands = []
        for c in args.candidates:
            path, start, end = parse_clip_arg(c)
            cands.append({"id": c, "path": path, "start": start, "end": end})
    rt = runtime_from_args(args)
    ans = rt.mcq(query, [ClipSpec(c["path"], c["start"], c["end"]) for c in cands], mode=args.mode)
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
    result = {
        "query": query,
        "mode": args.mode,
        "answer": ans.answer,
        "ranking": ans.ranking(),
        "candidates": rows,
    }
    if answer_key is not None:
        result["correct_answer"] = answer_key
        result["correct"] = ans.answer == answer_key
    if args.json:
        print_json(result)
    else:
        print(f"question: {query}  (mode {args.mode})")
        for i in ans.ranking():
            r = rows[i]
            mark = "->" if i == ans.answer else "  "
            truth = " (correct)" if answer_key is not None and i == answer_key else ""
            text = f'  "{r["text"]}"' if "text" in r else ""
            print(f"{mark} [{i}] {r['score']:+.4f}  {r['id']}{text}{truth}")
    return 0


# ------------------------------------------------------------------------------ bench / info


def cmd_bench(args: argparse.Namespace) -> int:
    rows = []
    for backend in args.backend:
        rt = runtime_from_args(args, backend=backend)
        if args.warmup_graphs:
            rt.warmup()
        cases = [c for c in args.cases if not c.startswith("score") or rt.has_fusion]
        rows += benchmark(rt, cases=cases, repeats=args.repeats)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'case':<12}{'backend':<13}{'device':<9}{'prec':<6}{'median ms':>11}{'min ms':>10}")
    for r in rows:
        print(
            f"{r['case']:<12}{r['backend']:<13}{r['device']:<9}{r['precision']:<6}"
            f"{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}"
        )
    return 0


def _importable(name: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return False, one_line(exc)
    return True, str(getattr(mod, "__version__", ""))


def collect_info() -> dict[str, Any]:
    """Build facts, available backends and devices (what ``egovlpv2 info`` prints)."""
    backends: dict[str, Any] = {"torch": {"available": True, "version": torch.__version__}}
    ok, ver = _importable("onnxruntime")
    backends["onnxruntime"] = {"available": ok, "version" if ok else "error": ver}
    if ok:
        import onnxruntime

        backends["onnxruntime"]["providers"] = onnxruntime.get_available_providers()
    ok, ver = _importable("tensorrt")
    backends["tensorrt"] = {"available": ok, "version" if ok else "error": ver}
    extras: dict[str, str | None] = {}
    for name in ("onnx", "onnxscript", "faiss", "pyarrow", "av", "torchcodec", "nvidia.dali"):
        ok, ver = _importable(name)
        extras[name] = ver if ok else None
    devices: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        devices["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    d = default_model_dir()
    return {
        "version": __version__,
        "build": build_info(),
        "backends": backends,
        "packages": extras,
        "devices": devices,
        "default_model": {"path": str(d), "present": (d / "model.safetensors").is_file()},
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print_json(info)
        return 0
    b = info["build"]
    print(
        f"egovlpv2-rt {info['version']}  build: {b.get('build')}  torch "
        f"{b.get('torch_runtime')}  (binaries target torch >= "
        f"{b.get('torch_target_version', '?')})"
    )
    if b.get("error"):
        print(f"  extension: {b['error']}")
    else:
        print(
            f"  CPU kernels: {b.get('cpu_isa')}; CUDA kernels loaded: "
            f"{b.get('cuda_kernels_loaded')}"
        )
    for name, v in info["backends"].items():
        state = (
            f"yes {v.get('version', '')}".strip() if v["available"] else f"no ({v.get('error')})"
        )
        extra = f"  providers: {', '.join(v['providers'])}" if v.get("providers") else ""
        print(f"  backend {name:<12} {state}{extra}")
    pk = ", ".join(f"{k} {v}" if v else f"{k} -" for k, v in info["packages"].items())
    print(f"  packages: {pk}")
    dv = info["devices"]
    print(
        f"  devices: cpu ({dv['cpu_threads']} threads)"
        + (f", cuda: {', '.join(dv['cuda'])}" if dv.get("cuda") else ", no CUDA device")
    )
    dm = info["default_model"]
    print(f"  default model: {dm['path']} ({'present' if dm['present'] else 'missing'})")
    return 0


# ------------------------------------------------------------------------------ parser


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register embed, search, index, mcq, bench and info."""
    s = sub.add_parser("embed", help="embed video clips into an embeddings file")
    s.add_argument(
        "--videos",
        required=True,
        help="a folder of videos, or a clip list (.txt: path[@START:END] per line; "
        ".csv/.tsv with path[,start,end,id])",
    )
    s.add_argument(
        "--out",
        required=True,
        help="embeddings file (.safetensors or .parquet); with --engine ray a folder",
    )
    add_model_options(s)
    s.add_argument(
        "--video-backend",
        choices=("pyav", "torchcodec", "dali"),
        default=None,
        help="video decoder (default pyav; dali decodes on the GPU)",
    )
    add_ray_options(s, "writing a folder of parquet parts")
    s.add_argument(
        "--decode-cpus",
        type=positive_float,
        default=1.0,
        help="CPUs per decode task (--engine ray)",
    )
    s.add_argument(
        "--decode-in-actor",
        action="store_true",
        help="decode inside the model actors with --video-backend (e.g. DALI on their GPU) "
        "instead of in CPU tasks (--engine ray)",
    )
    s.add_argument(
        "--batches-per-call",
        type=positive_int,
        default=4,
        help="with --decode-in-actor: model batches per actor call, decoded while the "
        "previous one is encoded (--engine ray)",
    )
    s.add_argument(
        "--shard",
        action="store_true",
        help="under torchrun: embed this rank's share into <out>.shard-R-of-W and "
        "write <out>.manifest.json",
    )
    s.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable clips (reported) instead of stopping",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same command from its parts (<out>.parts/)",
    )
    s.add_argument(
        "--part-size",
        type=positive_int,
        default=512,
        help="clips per part file written while embedding (rounded up to whole batches)",
    )
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("search", help="rank clips for a text query")
    s.add_argument(
        "--embeddings",
        required=True,
        help="embeddings file, shard manifest, or FAISS index (.faiss)",
    )
    s.add_argument("--query", required=True, type=text_arg)
    s.add_argument("--top-k", type=positive_int, default=10)
    s.add_argument(
        "--rerank",
        choices=("none", "fusion", "ensemble"),
        default="none",
        help="re-rank the top-k with the fusion encoder (reads the clips)",
    )
    add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("index", help="build a FAISS index (merging shard files)")
    s.add_argument(
        "--embeddings", required=True, nargs="+", help="embeddings file(s) or a shard manifest"
    )
    s.add_argument("--out", required=True, help="index file (.faiss; ids in <out>.json)")
    s.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat")
    s.add_argument("--nlist", type=positive_int, default=None, help="ivf cells (default ~sqrt(N))")
    s.add_argument("--merged", default=None, help="also write the merged embeddings to this file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("mcq", help="answer a multiple-choice question over candidate clips")
    s.add_argument("--query", default=None, type=text_arg, help="question text")
    s.add_argument(
        "--candidates",
        nargs="+",
        default=None,
        type=clip_spec,
        help="candidate clips: path or path@START:END",
    )
    s.add_argument("--egomcq", default=None, help="or: an egomcq.json file ...")
    s.add_argument("--video-dir", default=None, help="... its videos folder ...")
    s.add_argument(
        "--question", default=None, type=text_arg, help="... and a question key (default: first)"
    )
    s.add_argument("--mode", choices=("dual", "fusion", "ensemble"), default="ensemble")
    add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_mcq)

    s = sub.add_parser("bench", help="latency of the runtime on synthetic inputs")
    add_model_options(s, backend=False)
    s.add_argument(
        "--backend", nargs="+", default=["torch"], choices=("torch", "onnxruntime", "tensorrt")
    )
    s.add_argument(
        "--cases",
        nargs="+",
        default=["text_b1", "video_b1", "video_b8"],
        type=bench_case,
        help="text_bN, video_bN, score_bN",
    )
    s.add_argument("--repeats", type=positive_int, default=10)
    s.add_argument(
        "--warmup-graphs",
        action="store_true",
        help="capture every shape bucket first (CUDA graphs)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("info", help="build facts, available backends, devices")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)
