"""What this CPU is: its model name and the instruction-set features our engines care about.

int8 engines depend on the CPU they run on: with an int8 dot-product instruction
(x86 AVX512-VNNI or AVX-VNNI, ARM's dot-product extension) u8 x s8 products add
up exactly, so full-range 8-bit weights are both faster and closer to fp32;
without one (AVX2 only) ONNX Runtime's kernels add pairs of products in a
saturating 16-bit register and need 7-bit weights to stay exact. On x86-64 the
answer is read once from the CPUID instruction itself (see cpuid.py): what the
kernels of ONNX Runtime and OpenVINO dispatch on, even where /proc/cpuinfo says
otherwise (an emulated CPU: QEMU's `-cpu Haswell` on a VNNI host). Elsewhere, or
where CPUID cannot be run, /proc/cpuinfo (Linux) or sysctl (macOS); failing
those the flags are unknown and the safe choice (7-bit weights) follows. Tests
inject the text.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

# the features every report names, where the CPU has them (x86 flags and ARM features alike)
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                  "asimd", "asimddp", "i8mm", "sve", "bf16")
# int8 dot-product instructions, best first: the name a provenance record keeps
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")
# bf16 arithmetic the CPU does natively (OpenVINO's bf16 inference hint needs one)
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# platform.machine() of the CPUs whose features CPUID tells
X86_64 = ("x86_64", "amd64")
# macOS sysctl names -> the Linux flag they stand for
MACOS_FEATURES = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
                  "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.avx2_0": "avx2",
                  "hw.optional.avx512f": "avx512f"}


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name, architecture and feature flags (lower case, as Linux names them)."""

    model: str
    machine: str
    flags: frozenset[str]

    @property
    def int8_dot(self) -> str | None:
        """The int8 dot-product instruction this CPU has (e.g. "avx512_vnni"), or None."""
        return next((f for f in INT8_DOT_FLAGS if f in self.flags), None)

    @property
    def bf16(self) -> bool:
        """Whether the CPU computes in bfloat16 natively."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def reported_flags(self) -> list[str]:
        """The flags of REPORTED_FLAGS this CPU has, in that order."""
        return [f for f in REPORTED_FLAGS if f in self.flags]

    @property
    def isa_class(self) -> str:
        """The class of CPU a speed belongs to, e.g. "x86-64 AVX-512 VNNI BF16" or "x86-64 AVX2 only"."""
        f = self.flags
        if self.machine.lower() not in X86_64:
            return f"{self.machine or 'unknown architecture'} {' '.join(self.reported_flags) or 'no SIMD flags known'}"
        if "avx512f" in f:
            extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("amx_int8", "AMX"))
                      if flag in f]
            return " ".join(["x86-64 AVX-512", *extras])
        if "avx2" in f:
            return "x86-64 AVX2 + AVX-VNNI" if "avx_vnni" in f else "x86-64 AVX2 only"
        return "x86-64 without AVX2"

    def headline(self) -> str:
        """The first line of a speed report: "CPU: AMD EPYC, x86-64 AVX2 only"."""
        return f"CPU: {self.model or 'unknown model'}, {self.isa_class}"

    def describe(self) -> str:
        """One line for people and tables: model, architecture, the flags that matter."""
        flags = " ".join(self.reported_flags) or "no SIMD flags known"
        return f"{self.model or 'unknown CPU'} ({self.machine}; {flags})"

    def record(self) -> dict:
        """What an engine's provenance keeps of the CPU it was made on."""
        return {"model": self.model, "machine": self.machine, "int8_dot": self.int8_dot,
                "flags": self.reported_flags}


def parse_cpuinfo(text: str, machine: str = "") -> CpuInfo:
    """CpuInfo from /proc/cpuinfo text (x86 "flags" / ARM "Features" lines)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return CpuInfo(model=model, machine=machine or platform.machine(), flags=frozenset(f.lower() for f in flags))


def _macos() -> CpuInfo:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = {flag for name, flag in MACOS_FEATURES.items() if sysctl(name) == "1"}
    return CpuInfo(sysctl("machdep.cpu.brand_string"), platform.machine(), frozenset(flags))


def _x86(from_cpuinfo: CpuInfo | None) -> CpuInfo | None:
    """The CPU as CPUID describes it (flags and brand string), or None where CPUID cannot be run here."""
    from winclip.runtime import cpuid

    read = cpuid.read()
    if read is None:
        return None
    brand, flags = read
    return CpuInfo(brand or (from_cpuinfo.model if from_cpuinfo else ""), platform.machine(), flags)


@functools.lru_cache(maxsize=1)
def current() -> CpuInfo:
    """This machine's CPU, read once per process."""
    if platform.system() == "Linux" and platform.machine().lower() in AARCH64:
        return linux_arm()
    try:
        from_cpuinfo = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        from_cpuinfo = None
    if platform.machine().lower() in X86_64:
        from_cpuid = _x86(from_cpuinfo)
        if from_cpuid is not None:
            return from_cpuid
    if from_cpuinfo is not None:
        return from_cpuinfo
    if platform.system() == "Darwin":
        return _macos()
    return CpuInfo(platform.processor(), platform.machine(), frozenset())


# --- ARM64 (aarch64) -------------------------------------------------------------------------------------------------
AARCH64 = ("aarch64", "arm64")  # platform.machine() of a 64-bit ARM CPU (Linux, macOS)
# Linux's aarch64 HWCAP / HWCAP2 bits (uapi asm/hwcap.h) of the features an engine's speed or exactness depends on
HWCAP_BITS = {"asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22}
HWCAP2_BITS = {"sve2": 1, "i8mm": 13, "bf16": 14}
AT_HWCAP, AT_HWCAP2 = 16, 26  # getauxval() keys
# /proc/cpuinfo's "CPU part" of Arm's own cores (implementer 0x41) on the boards and servers a line runs
ARM_PARTS = {0xD03: "Cortex-A53", 0xD05: "Cortex-A55", 0xD08: "Cortex-A72", 0xD0B: "Cortex-A76",
             0xD0C: "Neoverse-N1", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78", 0xD42: "Cortex-A78AE",
             0xD49: "Neoverse-N2", 0xD4F: "Neoverse-V2"}


def arm_hwcaps() -> tuple[int, int] | None:
    """(AT_HWCAP, AT_HWCAP2) of this process from the C library's getauxval, or None where it cannot be asked.

    The kernel's own answer for the CPU the process runs on (under QEMU: the emulated CPU's, whatever the
    /proc/cpuinfo file says); on real hardware /proc/cpuinfo's Features line is printed from the same bits.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return int(getauxval(AT_HWCAP)), int(getauxval(AT_HWCAP2))


def arm_features(hwcap: int, hwcap2: int) -> frozenset[str]:
    """The feature names (as /proc/cpuinfo spells them) that HWCAP and HWCAP2 set."""
    return frozenset([name for name, bit in HWCAP_BITS.items() if hwcap >> bit & 1]
                     + [name for name, bit in HWCAP2_BITS.items() if hwcap2 >> bit & 1])


def arm_model(cpuinfo_text: str) -> str:
    """The core's name from /proc/cpuinfo's "CPU implementer" / "CPU part" lines (ARM kernels print no model name),
    or "" when they are absent; an unknown core is named by its numbers."""
    fields = {}
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    try:
        implementer, part = int(fields["cpu implementer"], 16), int(fields["cpu part"], 16)
    except (KeyError, ValueError):
        return ""
    if implementer == 0x41 and part in ARM_PARTS:
        return ARM_PARTS[part]
    return f"ARM CPU (implementer {implementer:#x}, part {part:#x})"


def arm_cpu(cpuinfo_text: str, hwcaps: tuple[int, int] | None, machine: str = "aarch64") -> CpuInfo:
    """An aarch64 CPU from /proc/cpuinfo text and (AT_HWCAP, AT_HWCAP2): the features from HWCAP where known
    (else the Features line), the model from the core's part number (else any model line)."""
    from_text = parse_cpuinfo(cpuinfo_text, machine)
    flags = arm_features(*hwcaps) if hwcaps is not None else from_text.flags
    return CpuInfo(arm_model(cpuinfo_text) or from_text.model, machine, flags)


def full_range_int8_exact(info: CpuInfo) -> str | None:
    """Why ONNX Runtime's int8 matrix kernels add the products of full-range (8-bit) weights exactly on this CPU,
    or None where they may saturate and 7-bit weights are needed (x86 without an int8 dot product).

    aarch64 is exact on every core, with or without the dot product (checked under emulation: Cortex-A72 and
    Cortex-A76 with weights of -128/127 against activations of 255): the NEON kernel widens both operands to
    16 bits and multiply-accumulates each product straight into 32-bit sums (UMLAL), and UDOT (asimddp) and
    UMMLA (i8mm) sum into 32 bits too. x86 without VNNI adds pairs of u8 x s8 products into a saturating
    16-bit register first (up to 2 x 255 x 127 = 64770 > 32767).
    """
    if info.machine.lower() in AARCH64:
        return ("aarch64: ONNX Runtime's ARM int8 kernels (NEON, UDOT with asimddp, UMMLA with i8mm) add "
                "every product into 32-bit sums, so 8-bit weights cannot saturate")
    if info.int8_dot:
        return f"{info.int8_dot}: the int8 dot product adds u8 x s8 products straight into 32-bit sums"
    return None


def linux_arm() -> CpuInfo:
    """This aarch64 Linux machine's CPU: HWCAP for the features, /proc/cpuinfo for the core's name."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return arm_cpu(text, arm_hwcaps(), platform.machine())
