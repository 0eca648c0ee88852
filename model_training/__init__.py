"""Offline side of hubert-lstm: models, losses, data, training, evaluation and export.

Never imports FastAPI; the service (`app`) imports only the inference side of this package
(model classes, bundle loading, CTC decoding).
"""

__version__ = "0.1.0"
