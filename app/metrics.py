"""Prometheus metrics, one CollectorRegistry per app (tests build several apps).

The names are a contract with the Grafana dashboard under docker/; do not rename them.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FRAME_BUCKETS = (50, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All service metrics; also the batcher's observer (see `app.batcher.BatcherObserver`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hlstm_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "hlstm_request_duration_seconds", "HTTP request latency.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("hlstm_queue_depth", "Requests waiting for a batch.", registry=r)
        self.queue_wait = Histogram(
            "hlstm_queue_wait_seconds", "Time from submit to batch start.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "hlstm_batch_size", "Items per batch.", buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_padded_frames = Histogram(
            "hlstm_batch_padded_frames", "Padded frames per batch (longest x count).",
            buckets=_FRAME_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_padding_ratio = Histogram(
            "hlstm_batch_padding_ratio", "Share of padded frames that are padding.",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "hlstm_inference_seconds", "Model time per batch (pad, copy, forward, slice).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "hlstm_audio_seconds", "Seconds of audio run through the model.", registry=r
        )
        self.decode_failures = Counter(
            "hlstm_decode_failures", "Uploads rejected while decoding, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "hlstm_errors", "Error responses and failed batches, by type.", ["type"], registry=r
        )
        self.model_ready = Gauge(
            "hlstm_model_ready", "1 when the model is loaded and warmed.", registry=r
        )
        # Live streams (realtime sessions and streamed uploads), app/step_batcher.py
        self.active_streams = Gauge("hlstm_active_streams", "Open live streams.", registry=r)
        self.stream_rtf = Histogram(
            "hlstm_stream_real_time_factor",
            "Compute seconds per second of audio advanced, per streaming step (< 1 keeps up).",
            buckets=_RTF_BUCKETS, registry=r,
        )  # fmt: skip
        self.stream_step_size = Histogram(
            "hlstm_stream_step_streams", "Streams advanced per streaming step.",
            buckets=_BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stream_delta_latency = Histogram(
            "hlstm_stream_delta_latency_seconds",
            "From the arrival of the audio chunk that completes a character to its delta sent.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.streams_refused = Counter(
            "hlstm_streams_refused", "Live streams refused, by reason.", ["reason"], registry=r
        )

    # BatcherObserver
    def on_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def on_batch(
        self,
        *,
        size: int,
        padded_frames: int,
        padding_ratio: float,
        queue_waits: Sequence[float],
        inference_seconds: float,
        audio_seconds: float,
    ) -> None:
        self.batch_size.observe(size)
        self.batch_padded_frames.observe(padded_frames)
        self.batch_padding_ratio.observe(padding_ratio)
        for wait in queue_waits:
            self.queue_wait.observe(wait)
        self.inference_seconds.observe(inference_seconds)
        self.audio_seconds.inc(audio_seconds)

    def on_batch_error(self, error_type: str) -> None:
        self.errors.labels(type=f"batch_{error_type}").inc()

    # StepObserver
    def on_active_streams(self, count: int) -> None:
        self.active_streams.set(count)

    def on_step(self, *, streams: int, audio_seconds: float, compute_seconds: float) -> None:
        self.stream_step_size.observe(streams)
        self.stream_rtf.observe(compute_seconds / audio_seconds)

    def on_error(self, error_type: str) -> None:
        """Count one error response."""
        self.errors.labels(type=error_type).inc()

    def on_decode_failure(self, reason: str) -> None:
        """Count one rejected upload."""
        self.decode_failures.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
