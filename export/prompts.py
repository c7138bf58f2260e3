"""The compositional prompt ensemble of WinCLIP: the one place the lists live."""

from __future__ import annotations

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ANOMALOUS_STATES = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def compose(object_name: str, states=NORMAL_STATES, templates=TEMPLATES) -> list[str]:
    """Every state x template prompt for one object, state-major."""
    return [t.format(s.format(object_name)) for s in states for t in templates]


def prompt_sets(object_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts): 154 and 88 with the default lists."""
    return compose(object_name, NORMAL_STATES), compose(object_name, ANOMALOUS_STATES)
