"""Write part of a manifest: its first HOURS (the synthetic corpus is already in random order)
and/or the utterances of some TTS engines (speaker ids are `engine:voice`). Several sources
are read in order as one (e.g. the train splits of two corpora that extend one train stream)."""

from __future__ import annotations

import argparse

from model_training.data.manifest import read_manifest, relative_path, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", nargs="+", help="one or more manifests, read in order")
    parser.add_argument("dst")
    parser.add_argument("--hours", type=float, default=None, help="default: all")
    parser.add_argument("--engine", nargs="+", default=None, help="keep only these engines")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()
    budget = float("inf") if args.hours is None else args.hours * 3600 * args.sample_rate
    entries, total = [], 0
    for src in args.src:
        manifest = read_manifest(src)
        for i, entry in enumerate(manifest):
            if total >= budget:
                break
            if args.engine is not None and (entry.speaker or "").split(":")[0] not in args.engine:
                continue
            # paths in the new manifest are relative to its own folder
            rel = relative_path(manifest.audio_path(i), args.dst)
            entries.append(entry.__class__(**{**vars(entry), "path": rel}))
            total += entry.num_samples
    if not entries:
        raise SystemExit(f"{args.src}: nothing selected (engines {args.engine})")
    write_manifest(args.dst, entries)
    print(f"{len(entries)} utterances, {total / args.sample_rate / 3600:.2f} h -> {args.dst}")


if __name__ == "__main__":
    main()
