"""What DeepLabV3 and DeepLabV3+ share: a feature backbone, a head, an optional FCN aux head."""
from __future__ import annotations

from torch import Tensor, nn

from .layers import resize

__all__ = ["AtrousSegmenter"]


class AtrousSegmenter(nn.Module):
    """``forward(x)`` returns logits at the input size; ``(main, aux)`` in training with an aux head.

    Subclasses call :meth:`_setup` first, then build ``classifier`` and
    ``aux_classifier`` (in their own order: it fixes the random init a seed
    gives) and implement :meth:`_logits`.
    """

    aux_classifier: nn.Module | None

    def _setup(self, backbone: nn.Module, num_classes: int, align_corners: bool, aux: bool) -> dict[str, int]:
        self.num_classes = int(num_classes)
        self.align_corners = bool(align_corners)
        self.aux = bool(aux)
        self.output_stride = backbone.output_stride
        self.backbone = backbone
        return backbone.channels

    def _logits(self, feats: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = resize(self._logits(feats), size, self.align_corners)
        if self.training and self.aux_classifier is not None:
            return out, resize(self.aux_classifier(feats["aux"]), size, self.align_corners)
        return out
