"""bf16 only where the hardware computes it: the choice and the line that explains it."""

from pathlib import Path

import pytest

from mnistlit.runs import precision


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_and_says_why(monkeypatch, accelerator) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    chosen, why = precision.choose("bf16-mixed", accelerator)
    assert chosen == "32-true"
    assert why == (
        "precision 32-true: bf16-mixed was asked for, but this CPU has no AVX512-BF16 or AMX "
        "and would emulate bf16, slower than fp32"
    )


def test_bf16_on_a_cpu_with_native_bf16_is_kept_and_fp32_runs_hear_of_it(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: "AMX")
    assert precision.choose("bf16-mixed", "cpu") == (
        "bf16-mixed",
        "precision bf16-mixed: this CPU computes bf16 natively (AMX)",
    )
    chosen, why = precision.choose(None, "cpu")  # Lightning's default, as base.yaml leaves it
    assert chosen is None
    assert why.startswith("precision 32-true, as configured;") and "bf16-mixed trains faster" in why


def test_other_precisions_and_accelerators_are_left_as_configured(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    assert precision.choose("16-mixed", "cpu") == ("16-mixed", "precision 16-mixed, as configured")
    assert precision.choose("bf16-mixed", "mps") == ("bf16-mixed", "precision bf16-mixed, as configured")


def test_this_machines_answer_matches_its_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    expected = "AMX" if "amx_tile" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    assert precision.cpu_bf16_instructions() == expected
