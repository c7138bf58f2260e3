"""The x86-64 CPUID instruction, run from Python: the features the CPU's kernels really see.

/proc/cpuinfo is the kernel's account of the host CPU; under an emulator
(QEMU's `-cpu Haswell` on an AVX-512 host) it still names the host's flags,
while ONNX Runtime and OpenVINO pick their kernels from CPUID. So the flags the
int8 recipe depends on are read the way those libraries read them: a few bytes
of machine code (CPUID, and XGETBV for what the operating system enabled) in an
executable page, called through ctypes. Where that page cannot be made (a
hardened kernel), `read` returns None and /proc/cpuinfo is used instead.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

# cpuid(leaf, subleaf, uint32 out[4]): eax, ebx, ecx, edx after CPUID (System V calling convention)
_CPUID = bytes.fromhex(
    "53"          # push rbx (callee-saved, CPUID overwrites it)
    "89f8"        # mov eax, edi      leaf
    "89f1"        # mov ecx, esi      subleaf
    "4989d0"      # mov r8, rdx       out
    "0fa2"        # cpuid
    "418900"      # mov [r8], eax
    "41895804"    # mov [r8+4], ebx
    "41894808"    # mov [r8+8], ecx
    "4189500c"    # mov [r8+12], edx
    "5b"          # pop rbx
    "c3")         # ret
# xgetbv(index) -> uint64 edx:eax (only where CPUID says the OS uses XSAVE, else it faults)
_XGETBV = bytes.fromhex(
    "89f9"        # mov ecx, edi
    "0f01d0"      # xgetbv
    "48c1e220"    # shl rdx, 32
    "4809d0"      # or rax, rdx
    "c3")         # ret

# (leaf, subleaf, register, bit) -> the flag name Linux gives it
FEATURE_BITS = {
    (1, 0, "ecx", 12): "fma", (1, 0, "ecx", 28): "avx", (1, 0, "ecx", 20): "sse4_2",
    (7, 0, "ebx", 5): "avx2", (7, 0, "ebx", 16): "avx512f", (7, 0, "ebx", 30): "avx512bw",
    (7, 0, "ecx", 11): "avx512_vnni", (7, 0, "edx", 22): "amx_bf16", (7, 0, "edx", 24): "amx_tile",
    (7, 0, "edx", 25): "amx_int8", (7, 1, "eax", 4): "avx_vnni", (7, 1, "eax", 5): "avx512_bf16",
}
OSXSAVE = (1, 0, "ecx", 27)
# the register state each family of flags needs the OS to save (XCR0 bits): without it they are unusable
XCR0_AVX = 0b110  # SSE + AVX (YMM)
XCR0_AVX512 = 0b1110_0110  # + opmask, ZMM upper halves, ZMM16-31
XCR0_AMX = 0b11 << 17  # tile config + tile data
NEEDS = {"avx": XCR0_AVX, "fma": XCR0_AVX, "avx2": XCR0_AVX, "avx_vnni": XCR0_AVX, "avx512f": XCR0_AVX512,
         "avx512bw": XCR0_AVX512, "avx512_vnni": XCR0_AVX512, "avx512_bf16": XCR0_AVX512, "amx_bf16": XCR0_AMX,
         "amx_tile": XCR0_AMX, "amx_int8": XCR0_AMX}
REGISTERS = ("eax", "ebx", "ecx", "edx")


class _Code:
    """Machine code in its own executable page, callable with `prototype`."""

    def __init__(self, code: bytes, prototype):
        self.page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self.page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.call = prototype(address)


def _functions():
    cpuid = _Code(_CPUID, ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)))
    xgetbv = _Code(_XGETBV, ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32))
    return cpuid, xgetbv


def read() -> tuple[str, frozenset[str]] | None:
    """(brand string, Linux flag names) from CPUID and XGETBV; None where executable memory is refused."""
    try:
        cpuid_code, xgetbv_code = _functions()
    except (OSError, ValueError, AttributeError, TypeError):  # no PROT_EXEC here (or no mmap.PROT_* at all)
        return None

    def cpuid(leaf: int, subleaf: int = 0) -> dict[str, int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid_code.call(leaf, subleaf, out)
        return dict(zip(REGISTERS, out))

    top = cpuid(0)["eax"]
    leaves = {(leaf, sub): cpuid(leaf, sub) for leaf, sub in ((1, 0), (7, 0), (7, 1)) if leaf <= top}

    def has(leaf, sub, register, bit) -> bool:
        return bool(leaves.get((leaf, sub), {}).get(register, 0) >> bit & 1)

    xcr0 = xgetbv_code.call(0) if has(*OSXSAVE) else 0
    flags = {name for bits, name in FEATURE_BITS.items() if has(*bits) and xcr0 & NEEDS.get(name, 0) == NEEDS.get(name, 0)}
    return _brand(cpuid), frozenset(flags)


def _brand(cpuid) -> str:
    """The CPU's brand string (leaves 0x80000002-4), as /proc/cpuinfo's "model name" shows it."""
    if cpuid(0x80000000)["eax"] < 0x80000004:
        return ""
    raw = b"".join(struct.pack("<4I", *(cpuid(leaf)[r] for r in REGISTERS)) for leaf in range(0x80000002, 0x80000005))
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
