"""Which numeric precision a run trains in, and why: bf16 only where the hardware computes it.

Recipes opt in with ``trainer.precision: bf16-mixed`` (docs/results.md and docs/speed.md: 1.5–2× faster
epochs on a CPU with AMX; StrongNet's recipes keep their accuracy, the seed's Net loses 0.1–0.24%,
so base.yaml stays fp32). A CPU without AVX512-BF16 or AMX emulates bf16 and runs it slower than
fp32, so there the run falls back to ``32-true`` and says so.
"""

import torch

BF16 = ("bf16-mixed", "bf16-true", "bf16")


def cpu_bf16_instructions() -> str | None:
    """The CPU's native bf16 instructions (``"AMX"``, ``"AVX512-BF16"``), or None.

    torch answers through private functions (tests/test_lightning_contract.py checks that they
    exist, so a torch release that renames them fails there instead of training in fp32).
    """
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def runs_on_cuda(accelerator: object) -> bool | None:
    """True/False for the accelerators this project names; None for anything else (left alone)."""
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator == "cpu":
        return False
    if accelerator == "auto":
        return torch.cuda.is_available()
    return None


def choose(requested: object, accelerator: object) -> tuple[object, str]:
    """The precision to train in (``requested`` unless the hardware lacks bf16) and why, in one line."""
    name = str(requested or "32-true")  # None is Lightning's default, 32-true
    on_cuda = runs_on_cuda(accelerator)
    as_configured = f"precision {name}, as configured"
    if on_cuda is None:
        return requested, as_configured
    if on_cuda:
        if name in BF16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "32-true", f"precision 32-true: {name} was asked for, but this GPU has no bf16"
        return requested, as_configured
    native = cpu_bf16_instructions()
    if name in BF16 and native is None:
        return "32-true", (
            f"precision 32-true: {name} was asked for, but this CPU has no AVX512-BF16 or AMX "
            "and would emulate bf16, slower than fp32"
        )
    if name in BF16:
        return requested, f"precision {name}: this CPU computes bf16 natively ({native})"
    if native is not None and name in ("32-true", "32"):
        return (
            requested,
            f"{as_configured}; this CPU computes bf16 natively ({native}): bf16-mixed trains faster",
        )
    return requested, as_configured
