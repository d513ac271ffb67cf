"""relcomp: explain neural retrievers and rerankers with LRP, and compress them by what matters."""

from __future__ import annotations

import logging

from relcomp.models import BiEncoder, CrossEncoder, load_model

__version__ = "0.1.0"
__all__ = ["BiEncoder", "CrossEncoder", "__version__", "load_model"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
