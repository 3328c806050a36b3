"""The interface every runtime implements: a normalised batch in, class ids (or logits) out."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs an exported network.

    Input: float32 (N, 3, H, W), already resized and normalised by the
    predictor. ``labels`` returns (N, H, W) uint8 class ids computed inside the
    runtime (the graph ends with the argmax); ``logits`` returns (N, C, H, W)
    float32 where the graph was exported with them (slide, flip, letterbox).
    """

    name: str = "?"
    precision: str = "fp32"
    device: str = "cpu"

    @abstractmethod
    def labels(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"
