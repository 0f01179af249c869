"""``egovlpv2 demo``: the main job, offline, in one command: write example clips, embed them
with the shipped default model, rank them for a text query and answer an EgoMCQ question."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data.egoclip import read_egoclip
from ..data.egomcq import INTER, read_egomcq
from ..data.synthetic import SynthConfig, generate_dataset
from ..video import ClipSpec
from .common import (
    add_model_options,
    non_negative_int,
    positive_int,
    print_json,
    runtime_from_args,
    text_arg,
)

__all__ = ["add_subcommands", "cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate example clips, embed them, answer a text query and an EgoMCQ question."""
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="egovlpv2-demo-"))
    quiet = args.json
    t0 = time.perf_counter()
    if not quiet:
        print(f"1/4 writing example clips to {work} ...", flush=True)
    # Six actions per video leave enough distinct narrations for intra-video questions.
    paths = generate_dataset(
        work, args.seed, SynthConfig(num_clips=args.clips, clips_per_video=6, size=64, num_mcq=4)
    )
    records = read_egoclip(paths["egoclip"])
    questions = read_egomcq(paths["egomcq"])
    if not quiet:
        print(
            f"2/4 loading the model ({args.checkpoint or 'shipped default'}, {args.backend}) ...",
            flush=True,
        )
    rt = runtime_from_args(args)
    specs = [
        ClipSpec(str(paths["videos"] / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
        for r in records
    ]
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
    ranked = [
        {
            "rank": r + 1,
            "id": ids[i],
            "text": records[i].clip_text,
            "score": float(sims[i]),
            "match": records[i].clip_text == query,
        }
        for r, i in enumerate(order.tolist())
    ]
    # Prefer an intra-video question: it needs the actions, not only the objects.
    question = next((x for x in questions if x.type != INTER), questions[0])
    if not quiet:
        print("4/4 answering an EgoMCQ question ...", flush=True)
    cand_specs = [
        ClipSpec(str(paths["videos"] / f"{c.video_uid}.mp4"), c.clip_start, c.clip_end)
        for c in question.choices
    ]
    mode = "ensemble" if rt.has_fusion else "dual"
    ans = rt.mcq(question.text, cand_specs, mode=mode)
    result: dict[str, Any] = {
        "folder": str(work),
        "model": str(
            rt.files.checkpoint
            if rt.files and rt.files.checkpoint
            else rt.files.export_dir
            if rt.files
            else ""
        ),
        "backend": rt.backend,
        "device": str(rt.device),
        "search": {"query": query, "results": ranked},
        "mcq": {
            "question": question.text,
            "type": "inter" if question.type == INTER else "intra",
            "mode": mode,
            "answer": ans.answer,
            "correct_answer": question.answer,
            "correct": ans.answer == question.answer,
            "candidates": [
                {"index": i, "text": c.clip_text, "score": float(ans.scores[i])}
                for i, c in enumerate(question.choices)
            ],
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if quiet:
        print_json(result)
        return 0
    print(f'\nsearch: "{query}" over {len(specs)} clips')
    for r in ranked:
        print(
            f'  {r["rank"]}. {r["score"]:+.3f}  {r["id"]:<24} "{r["text"]}"'
            + ("   <- the query's clip" if r["match"] else "")
        )
    m = result["mcq"]
    print(f'\nEgoMCQ ({m["type"]}-video, {mode}): "{m["question"]}"')
    for i in ans.ranking():
        c = m["candidates"][i]
        mark = "->" if i == ans.answer else "  "
        truth = "   (correct answer)" if i == question.answer else ""
        print(f'  {mark} [{i}] {c["score"]:+.3f}  "{c["text"]}"{truth}')
    print(
        f"\nanswer {'correct' if m['correct'] else 'wrong'}; done in {result['seconds']} s "
        f"({rt.backend} on {rt.device}). Files: {work}"
    )
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register demo."""
    s = sub.add_parser(
        "demo",
        help="generate example clips, embed them, answer a query and an EgoMCQ question (offline)",
    )
    add_model_options(s)
    s.add_argument("--out", default=None, help="folder for the clips (default: a temp folder)")
    s.add_argument(
        "--query", default=None, type=text_arg, help="text query (default: a clip's narration)"
    )
    s.add_argument(
        "--clips",
        type=positive_int,
        default=30,
        help="example clips (6 per video, at least 5 videos)",
    )
    s.add_argument("--top-k", type=positive_int, default=5)
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_demo)
