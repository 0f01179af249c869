"""Files to embeddings on the CPU: the overlapped pipeline (`Runtime.encode_video`: batch k+1
decodes while batch k is encoded) against decode alone, encode alone (pixels decoded before)
and the sequential way (decode a batch, then encode it), all in one run, as clips/s. The
pipeline should reach the slower of decode alone and encode alone (issue 19: >= 0.8 of it).

    python bench/bench_pipeline.py --clips 96 --batch 16 --torch-threads 1 --decode-workers 1
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from egovlpv2_rt.data.egoclip import read_egoclip
from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
from egovlpv2_rt.runtime import load
from egovlpv2_rt.video import ClipSpec


def _best(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--decode-workers", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        n_videos = max(1, args.clips // 8)
        generate_dataset(tmp, 0, SynthConfig(num_clips=n_videos * 8, num_mcq=2))
        recs = read_egoclip(Path(tmp) / "egoclip.csv")[: args.clips]
        clips = [
            ClipSpec(str(Path(tmp) / "videos" / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
            for r in recs
        ]
        rt = load(args.checkpoint, device="cpu", decode_workers=args.decode_workers)
        bs = args.batch
        rt.encode_video(clips[:bs], batch_size=bs)  # warm-up
        pixels = rt.read_clips(clips)

        def sequential() -> None:
            for i in range(0, len(clips), bs):
                rt._encode_pixels(rt.read_clips(clips[i : i + bs]))

        def decode_alone() -> None:
            for i in range(0, len(clips), bs):
                rt.read_clips(clips[i : i + bs])

        def encode_alone() -> None:
            for i in range(0, len(clips), bs):
                rt._encode_pixels(pixels[i : i + bs])

        n = len(clips)
        t = {
            "decode_alone": _best(decode_alone, args.reps),
            "encode_alone": _best(encode_alone, args.reps),
            "sequential": _best(sequential, args.reps),
            "pipeline": _best(lambda: rt.encode_video(clips, batch_size=bs), args.reps),
        }
    rate = {k: n / v for k, v in t.items()}
    slower = min(rate["decode_alone"], rate["encode_alone"])
    print(
        json.dumps(
            {
                "clips": n,
                "batch": bs,
                "torch_threads": args.torch_threads,
                "decode_workers": args.decode_workers,
                "cpu": platform.processor() or platform.machine(),
                "clips_per_s": {k: round(v, 1) for k, v in rate.items()},
                "pipeline_vs_slower_stage": round(rate["pipeline"] / slower, 3),
                "pipeline_vs_sequential": round(rate["pipeline"] / rate["sequential"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
