"""Plot the learned layer weights of the ASR, PR and SID heads side by side for every upstream.

Reads, per upstream NAME in --heads, the run folders ctc_NAME (ASR), pr_NAME (PR) and
sid_NAME (SID) under --runs: their layer_weights.json, or for older CTC runs the softmax of
best/head.safetensors' featurizer weights. Writes a PNG (one panel per upstream, bars per
hidden state) and a JSON with the weights and each head's weighted mean layer index ("centre"):
the paper's explanation of its SID result predicts SID centres below ASR/PR centres.

    python scripts/plot_layer_weights.py --runs runs/demo --heads "fbank teacher2 dkd_b4" \
        --out docs/img/layer_weights.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

TASKS = {"asr": "ctc", "pr": "pr", "sid": "sid"}
COLORS = {"asr": "#4c72b0", "pr": "#dd8452", "sid": "#55a868"}


def read_weights(run: Path) -> dict[str, Any] | None:
    """{"layer_indices", "weights", "layer_names"?} of a head run, or None."""
    path = run / "layer_weights.json"
    if path.is_file():
        return json.loads(path.read_text())
    head = run / "best" / "head.safetensors"
    if head.is_file():  # a CTC run from before layer_weights.json
        import torch
        from safetensors.torch import load_file

        raw = load_file(str(head))["featurizer.weights"]
        meta = json.loads((run / "best" / "head.json").read_text())
        return {
            "layer_indices": meta["head"]["layer_indices"],
            "weights": torch.softmax(raw.float(), 0).tolist(),
        }
    return None


def centre(record: dict[str, Any]) -> float:
    """Weighted mean of the layer indices."""
    return sum(i * w for i, w in zip(record["layer_indices"], record["weights"], strict=True))


def collect(runs: Path, heads: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in heads:
        per_task = {}
        for task, prefix in TASKS.items():
            record = read_weights(runs / f"{prefix}_{name}")
            if record is not None:
                per_task[task] = {
                    "layer_indices": record["layer_indices"],
                    "weights": record["weights"],
                    "centre": round(centre(record), 3),
                }
        if per_task:
            out[name] = per_task
    return out


def plot(data: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(data)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, tasks) in zip(axes.flat, data.items(), strict=False):
        width = 0.8 / max(1, len(tasks))
        for k, (task, rec) in enumerate(tasks.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in rec["layer_indices"]]
            label = f"{task.upper()} (centre {rec['centre']:.1f})"
            ax.bar(xs, rec["weights"], width, color=COLORS[task], label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("hidden state (0 = front-end)", fontsize=8)
        ax.set_ylabel("softmax weight", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle("Learned layer weights of the ASR, PR and SID heads (frozen upstreams)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--heads", default="fbank teacher1 teacher2 dkd_b1 dkd_b4 ce kd feature")
    parser.add_argument("--out", type=Path, default=Path("docs/img/layer_weights.png"))
    args = parser.parse_args()
    data = collect(args.runs, args.heads.split())
    if not data:
        raise SystemExit(f"no head runs with layer weights under {args.runs}")
    plot(data, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    for name, tasks in data.items():
        print(name, {t: r["centre"] for t, r in tasks.items()})


if __name__ == "__main__":
    main()
