"""README.md and docs/deployment.md list every limit with its HLSTM_* setting and default."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

#: The settings that bound what a request may cost (issue 17).
LIMITS = [
    "max_upload_mb", "max_audio_seconds", "max_request_audio_seconds", "max_files",
    "max_decoded_samples", "min_sample_rate", "max_sample_rate", "max_channels",
    "max_embedding_values", "max_concurrent_uploads", "upload_queue_limit", "queue_limit",
    "request_timeout_s", "max_headers", "max_header_bytes", "header_timeout_s",
    "body_idle_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "shutdown_grace_s",
    # live streams (issue 14)
    "max_streams", "stream_max_buffer_s", "realtime_max_append_bytes", "stream_idle_timeout_s",
]  # fmt: skip


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("doc", ["README.md", "docs/deployment.md"])
def test_every_limit_is_documented_with_its_default(doc):
    rows = [line for line in (ROOT / doc).read_text().splitlines() if line.startswith("|")]
    defaults = Settings.model_fields
    for name in LIMITS:
        env = f"`HLSTM_{name.upper()}`"
        row = next((r for r in rows if env in r), None)
        assert row is not None, f"{doc} has no table row for {env}"
        cells = [c.strip() for c in row.split("|")]
        settings_cell = next(i for i, c in enumerate(cells) if env in c)
        names = [n.strip(" `") for n in cells[settings_cell].split("/")]
        values = [v.strip() for v in cells[settings_cell + 1].split("/")]
        default = _text(defaults[name].default)
        assert values[names.index(f"HLSTM_{name.upper()}")] == default, (doc, name, row)


def test_the_limits_list_covers_the_settings_that_bound_cost():
    """A new max_/timeout setting must be added to LIMITS (and so to both documents)."""
    bounded = {
        n for n in Settings.model_fields
        if n.startswith(("max_", "min_")) or n.endswith(("_timeout_s", "_limit", "_grace_s"))
    }  # fmt: skip
    bounded -= {"max_batch_size", "max_batch_frames", "max_wait_ms"}  # batching, not limits
    assert bounded <= set(LIMITS), bounded - set(LIMITS)
