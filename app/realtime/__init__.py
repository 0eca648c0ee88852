"""OpenAI Realtime transcription protocol: session configuration shapes and the session."""
