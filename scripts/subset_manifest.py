"""Write the first HOURS of a manifest (the synthetic corpus is already in random order)."""

from __future__ import annotations

import argparse

from model_training.data.manifest import read_manifest, relative_path, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--hours", type=float, required=True)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()
    manifest = read_manifest(args.src)
    budget = args.hours * 3600 * args.sample_rate
    entries, total = [], 0
    for i, entry in enumerate(manifest):
        if total >= budget:
            break
        # paths in the new manifest are relative to its own folder
        rel = relative_path(manifest.audio_path(i), args.dst)
        entries.append(entry.__class__(**{**vars(entry), "path": rel}))
        total += entry.num_samples
    write_manifest(args.dst, entries)
    print(f"{len(entries)} utterances, {total / args.sample_rate / 3600:.2f} h -> {args.dst}")


if __name__ == "__main__":
    main()
