"""One router per area: audio (transcriptions, embeddings), models, health (+ metrics)."""
