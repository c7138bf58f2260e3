"""The WinCLIP paper's published means (Jeong et al., CVPR 2023, tables 1-2 and 5-6), and when they apply.

Numbers are in %, means over all categories of the data set, in the paper's
column order: image AUROC, AUPR, F1-max | pixel AUROC, PRO, pixel F1-max
(`PAPER_COLUMNS` names each by its key in metrics.METRICS).
"""

from __future__ import annotations

PAPER_MODEL = "ViT-B-16-plus-240"
PAPER_TAG = "laion400m_e31"
PAPER_LABEL = f"paper (WinCLIP/WinCLIP+, {PAPER_MODEL} {PAPER_TAG}, all categories)"

PAPER_COLUMNS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_pro", "pixel_f1_max")
PAPER_MEANS = {
    "mvtec": {0: (91.8, 96.5, 92.9, 85.1, 64.6, 31.7), 1: (93.1, 96.5, 93.7, 95.2, 87.1, 55.9),
              2: (94.4, 97.0, 94.4, 96.0, 88.4, 58.4), 4: (95.2, 97.3, 94.7, 96.2, 89.0, 59.5)},
    "visa": {0: (78.1, 81.2, 79.0, 79.6, 56.8, 14.8), 1: (83.8, 85.1, 83.1, 96.4, 85.1, 41.3),
             2: (84.6, 85.8, 83.0, 96.8, 86.2, 43.5), 4: (87.3, 88.8, 84.2, 97.2, 87.6, 47.0)},
}


def is_paper_backbone(backbone: dict) -> bool:
    """The paper's backbone with the paper's weights (by pretrained tag)."""
    weights = backbone.get("weights") or {}
    return (backbone.get("open_clip_model") == PAPER_MODEL and weights.get("kind") == "tag"
            and weights.get("tag") == PAPER_TAG)


def weights_warning(backbone: dict) -> str | None:
    """A warning when the numbers cannot say anything about CLIP: random or unidentified weights."""
    weights = backbone.get("weights") or {}
    if weights.get("kind") == "none":
        return ("RANDOM WEIGHTS (--pretrained none): these numbers say nothing about CLIP or WinCLIP, "
                "only that the pipeline runs")
    if weights.get("kind") == "file":
        return (f"weights from the file {weights.get('file')} (sha256 {str(weights.get('sha256'))[:12]}...), which this "
                "tool cannot identify as pretrained: if they are random or fine-tuned, compare with care")
    return None


def paper_means(layout: str, shots: int, backbone: dict) -> dict[str, float] | None:
    """The paper's mean row (metric name -> %) for this data set and shot count, when the backbone and weights
    are the paper's."""
    if not is_paper_backbone(backbone):
        return None
    row = PAPER_MEANS.get(layout, {}).get(shots)
    return None if row is None else dict(zip(PAPER_COLUMNS, row))
