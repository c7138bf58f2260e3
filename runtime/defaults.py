"""Defaults and limits: the one place each is stated.

Export writes the algorithm defaults into every manifest and the runtime reads
them back from there; the values below are what a new bundle gets and the
limits every reader enforces. Torch-free, so both sides import it.
"""

from __future__ import annotations

from winclip.runtime.errors import SettingError, short_repr

# --- WinCLIP algorithm defaults (docs/algorithm.md)
WINDOW_SCALES = (2, 3)
WINDOW_STRIDE = 1
TEMPERATURE = 0.07  # anomalib and the closest reproduction; CLIP's own scale 100 is tau 0.01
TEXT_ENSEMBLES = ("normalized_mean", "raw_mean")
TEXT_ENSEMBLE = "normalized_mean"

# OpenAI CLIP normalisation, what open_clip uses for ViT-B-16-plus-240
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# --- ONNX
OPSET = 17
OPSET_RANGE = (14, 20)
DYNAMO_MIN_OPSET = 18  # torch's dynamo exporter writes opset 18 or later
EXPORTERS = ("auto", "torchscript", "dynamo")

# --- ONNX Runtime
PROVIDERS = ("auto", "cuda", "cpu")
# engine precisions a bundle may hold -> the device kinds `--precision auto` tries each on, with the words that say
# why (auto walks this table in order; fp32 is its fallback everywhere). A builder of a new precision
# (calibration/engines) names a row here: the runtime must know it without the calibration package.
PRECISIONS: dict[str, dict[str, str]] = {
    "fp32": {},
    "fp16": {"cuda": "fp16 on CUDA"},
    "int8": {"cpu": "guarded int8 on CPU"},
}

# --- the accuracy guard: what a reduced-precision engine must keep of fp32 to be admitted
# (calibration/engines/guard.py applies them when an engine is made; `--precision auto` picks
# only engines whose recorded guard passed limits at least this strict)
GUARD_LIMITS = {"map_pearson_median": 0.99, "map_pearson_min": 0.97, "score_spearman": 0.98,
                "embedding_cosine_min": 0.99}
GUARD_CLOSE_ENOUGH = 1e-3  # maps/scores within this of fp32 everywhere pass whatever their correlation

# --- reaching a peer that may be away (a camera, a stream, a served engine): one set of rules for all
OPEN_ATTEMPTS = 3  # tries at start before giving up (unless told to wait: --wait-for-source)
BACKOFF_S = (0.5, 30.0)  # reconnect waits: the first, doubling up to the longest


def next_wait(delay: float, backoff: tuple[float, float] = BACKOFF_S) -> float:
    """The wait after `delay` in a backoff schedule: double it, up to the longest."""
    return min(delay * 2, backoff[1])


# --- served engines (winclip-serve, Triton Inference Server; docs/serving.md)
TRITON_SCHEME = "triton"  # --engine triton://HOST[:PORT]/MODEL, spoken over Triton's gRPC protocol
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults
SERVED_MODEL_NAME = "winclip"
SERVED_TIMEOUT_S = 60.0  # one request to a served engine, queueing on the server included

# --- winclip-export --pretrained none: random weights drawn from this seed (--seed), so a bundle made
# without the real checkpoint is the same bundle every time; every command that loads one says its scores
# mean nothing (runtime/bundle.py)
RANDOM_WEIGHTS_SEED = 0

# --- limits every reader enforces
MAX_IMAGE_PIXELS = 50_000_000  # decoded pixels per image; WINCLIP_MAX_PIXELS overrides
MAX_IMAGE_BYTES = 256 << 20  # encoded bytes of one image file, read before any decoding; WINCLIP_MAX_IMAGE_MB overrides
MAX_JSON_BYTES = 4 << 20  # manifest.json / profile.json / a data set's CSV
MAX_TEXT_BYTES = 4 << 20  # one object's text prototypes
MAX_ENGINE_BYTES = 8 << 30  # one engine graph
MAX_NAME_CHARS = 255  # one file-name component, as most file systems allow

# --- line profiles that learn (docs/line-profiles.md)
MEMORY_MAX_SHOTS = 16  # a memory holds at most this many images' worth of rows per part; beyond, k-center keeps
# The graph outputs a memory keeps of one image (window and patch rows, float32): 1.75 MB for ViT-B-16+,
# ~9 MB for the largest open_clip ViT (ViT-H-14-378: 27x27 patches of width 1280, 676 + 625 windows of 1024).
MAX_IMAGE_ROWS_BYTES = 10 << 20
# A whole few-shot memory of a line profile, all its arrays together: the most winclip-calibrate (--shots up
# to MEMORY_MAX_SHOTS) and teaching (k-center beyond it) can ever write. A profile whose arrays add up to more
# is refused from its record, before a byte is read: 160 MiB, 28 MB for ViT-B-16+.
MAX_MEMORY_BYTES = MEMORY_MAX_SHOTS * MAX_IMAGE_ROWS_BYTES
REFERENCE_MAX_HELD_OUT = 100  # held-out normals whose graph outputs a profile keeps (thresholds, drift)
REFERENCE_MAX_TAUGHT = 50  # taught normals kept beside them (the newest)
PROFILE_KEEP_VERSIONS = 20  # version folders kept on disk (the current one always)


def check_temperature(value) -> float:
    """The softmax temperature as a float, or SettingError (a ValueError): it must be finite and > 0."""
    try:
        tau = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"temperature must be a finite number > 0, got {short_repr(value)}") from None
    if not 0.0 < tau < float("inf"):
        raise SettingError(f"temperature must be finite and > 0, got {short_repr(value)}")
    return tau


def check_threshold(value, name: str = "threshold") -> float | None:
    """None, or a finite number in [0, 1] (scores are probabilities), or SettingError (a ValueError)."""
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except OverflowError:  # an integer too large for a float
        number = None
    if number is None or not 0.0 <= number <= 1.0:
        raise SettingError(f"{name} must be a number in [0, 1], got {short_repr(value)}")
    return number


