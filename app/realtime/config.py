"""Transcription-session configuration in OpenAI's two shapes (beta and GA), and our extension.

Beta (`OpenAI-Beta: realtime=v1`): `transcription_session.update` with
    {input_audio_format: "pcm16", input_audio_transcription: {model, language, prompt},
     turn_detection: {type: "server_vad", threshold, prefix_padding_ms, silence_duration_ms}
                     | null, include, input_audio_noise_reduction}
GA: `session.update` with
    {type: "transcription", audio: {input: {format: {type: "audio/pcm", rate},
     transcription: {...}, turn_detection: {...} | null, noise_reduction}}, include}
Either shape may carry our opt-in extension under `hubert_lstm`:
    {embedding_layers: [int, ...] | "all" | "last" | null, timing: bool}
Updates merge into the current configuration (a field left out keeps its value; `null`
turns turn detection off), as OpenAI's do. Transcription options (model, language, prompt)
and noise reduction are accepted and echoed; the bundle decides what is transcribed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from app.errors import BadRequestError
from app.pcm import SUPPORTED_RATES
from app.routes.audio import parse_layers
from app.vad import VadSettings

EXTENSION = "hubert_lstm"


class ProtocolError(Exception):
    """A client event we cannot honour: becomes an `error` event (the session lives on)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


@dataclass
class SessionConfig:
    """The session's state as both shapes describe it."""

    sample_rate: int = 24_000
    turn_detection: VadSettings | None = field(default_factory=VadSettings)
    transcription: dict[str, Any] = field(default_factory=dict)  # model, language, prompt
    noise_reduction: dict[str, Any] | None = None
    include: list[str] = field(default_factory=list)
    embedding_layers: list[int] = field(default_factory=list)  # extension; empty = off
    timing: bool = False  # extension: delta events carry audio times

    # ------------------------------------------------------------------ parsing
    def updated(self, session: object, *, beta: bool, num_layers: int) -> SessionConfig:
        """A new config with `session` (one update event's `session`) merged in."""
        if not isinstance(session, dict):
            raise ProtocolError("session must be an object", param="session")
        new = copy.deepcopy(self)
        if beta:
            new._merge_beta(session)
        else:
            new._merge_ga(session)
        if "include" in session:
            include = session["include"]
            if include is not None and not _is_str_list(include):
                raise ProtocolError("include must be a list of strings", param="session.include")
            new.include = list(include or [])
        if EXTENSION in session:
            new._merge_extension(session[EXTENSION], num_layers)
        return new

    def _merge_beta(self, s: dict[str, Any]) -> None:
        if "input_audio_format" in s:
            fmt = s["input_audio_format"]
            if fmt != "pcm16":
                raise ProtocolError(
                    f"input_audio_format {fmt!r} is not supported; use 'pcm16' (24 kHz)",
                    param="session.input_audio_format",
                )
            self.sample_rate = 24_000
        if "input_audio_transcription" in s:
            self.transcription = _transcription(
                s["input_audio_transcription"], "session.input_audio_transcription"
            )
        if "turn_detection" in s:
            self.turn_detection = _turn_detection(s["turn_detection"], "session.turn_detection")
        if "input_audio_noise_reduction" in s:
            self.noise_reduction = s["input_audio_noise_reduction"]

    def _merge_ga(self, s: dict[str, Any]) -> None:
        kind = s.get("type", "transcription")
        if kind != "transcription":
            raise ProtocolError(
                f"session.type {kind!r} is not supported: this server only transcribes "
                "(use type 'transcription')",
                param="session.type",
            )
        audio = s.get("audio") or {}
        if not isinstance(audio, dict):
            raise ProtocolError("session.audio must be an object", param="session.audio")
        inp = audio.get("input") or {}
        if not isinstance(inp, dict):
            raise ProtocolError("audio.input must be an object", param="session.audio.input")
        if "format" in inp:
            self.sample_rate = _ga_format(inp["format"])
        if "transcription" in inp:
            self.transcription = _transcription(
                inp["transcription"], "session.audio.input.transcription"
            )
        if "turn_detection" in inp:
            self.turn_detection = _turn_detection(
                inp["turn_detection"], "session.audio.input.turn_detection"
            )
        if "noise_reduction" in inp:
            self.noise_reduction = inp["noise_reduction"]

    def _merge_extension(self, ext: object, num_layers: int) -> None:
        param = f"session.{EXTENSION}"
        if ext is None:
            self.embedding_layers, self.timing = [], False
            return
        if not isinstance(ext, dict):
            raise ProtocolError(f"{EXTENSION} must be an object", param=param)
        unknown = set(ext) - {"embedding_layers", "timing"}
        if unknown:
            raise ProtocolError(f"unknown {EXTENSION} fields {sorted(unknown)}", param=param)
        if "timing" in ext:
            if not isinstance(ext["timing"], bool):
                raise ProtocolError("timing must be true or false", param=f"{param}.timing")
            self.timing = ext["timing"]
        if "embedding_layers" in ext:
            self.embedding_layers = _layers(
                ext["embedding_layers"], num_layers, f"{param}.embedding_layers"
            )

    # ------------------------------------------------------------------ shapes
    def beta_session(self, session_id: str) -> dict[str, Any]:
        """The beta `TranscriptionSession` object."""
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": self.transcription or None,
            "turn_detection": self._turn_detection_out(),
            "input_audio_noise_reduction": self.noise_reduction,
            "include": self.include,
            "modalities": ["text"],
            "client_secret": None,
            **self._extension_out(),
        }

    def ga_session(self, session_id: str) -> dict[str, Any]:
        """The GA transcription session object (`type: transcription`)."""
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.sample_rate},
                    "transcription": self.transcription or None,
                    "turn_detection": self._turn_detection_out(),
                    "noise_reduction": self.noise_reduction,
                }
            },
            "include": self.include,
            **self._extension_out(),
        }

    def _turn_detection_out(self) -> dict[str, Any] | None:
        vad = self.turn_detection
        if vad is None:
            return None
        return {
            "type": "server_vad",
            "threshold": vad.threshold,
            "prefix_padding_ms": vad.prefix_padding_ms,
            "silence_duration_ms": vad.silence_duration_ms,
        }

    def _extension_out(self) -> dict[str, Any]:
        if not self.embedding_layers and not self.timing:
            return {}
        return {EXTENSION: {"embedding_layers": self.embedding_layers, "timing": self.timing}}


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _transcription(value: object, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("transcription options must be an object", param=param)
    return {k: value[k] for k in ("model", "language", "prompt") if k in value}


def _turn_detection(value: object, param: str) -> VadSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("turn_detection must be an object or null", param=param)
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise ProtocolError(
            f"turn_detection type {kind!r} is not supported; use 'server_vad' or null",
            param=f"{param}.type",
        )
    defaults = VadSettings()
    try:
        return VadSettings(
            threshold=float(_number(value, "threshold", defaults.threshold, param)),
            prefix_padding_ms=int(
                _number(value, "prefix_padding_ms", defaults.prefix_padding_ms, param)
            ),
            silence_duration_ms=int(
                _number(value, "silence_duration_ms", defaults.silence_duration_ms, param)
            ),
        )
    except ValueError as exc:
        raise ProtocolError(str(exc), param=param) from None


def _number(d: dict[str, Any], key: str, default: float, param: str) -> float:
    value = d.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{key} must be a number", param=f"{param}.{key}")
    return value


def _ga_format(fmt: object) -> int:
    param = "session.audio.input.format"
    if not isinstance(fmt, dict):
        raise ProtocolError("format must be an object", param=param)
    kind = fmt.get("type", "audio/pcm")
    if kind != "audio/pcm":
        raise ProtocolError(
            f"audio format {kind!r} is not supported; use 'audio/pcm'", param=f"{param}.type"
        )
    rate = fmt.get("rate", 24_000)
    if rate not in SUPPORTED_RATES:
        raise ProtocolError(
            f"sample rate {rate!r} is not supported; use one of {list(SUPPORTED_RATES)}",
            param=f"{param}.rate",
        )
    return int(rate)


def _layers(value: object, num_layers: int, param: str) -> list[int]:
    """'all' | 'last' | list of indices (negative from the end) | null -> unique indices."""
    if value is None:
        return []
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ProtocolError("embedding_layers must be 'all', 'last' or integers", param=param)
    try:
        return parse_layers(value, num_layers)
    except BadRequestError as exc:
        raise ProtocolError(exc.message, param=param) from None
