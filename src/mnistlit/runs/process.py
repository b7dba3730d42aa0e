"""Process-level settings: glibc's malloc, how torch asks whether CUDA is there, known noise."""

import ctypes
import logging
import os
import sys
import warnings

import lightning as L


def quiet_known_noise() -> None:
    """Silence messages that tell a user nothing about their run."""
    # Lightning 2.6 calls a torch API that torch 2.14 deprecated; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # test/predict in a new process restore a checkpoint from another run's folder, by design.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # Each run's version_N folder is created before the logger sees it.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # The summary's size estimate assumes 32-bit weights under bf16-mixed, which is right: the
    # weights stay float32 and only the computation runs in bf16.
    warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model summary")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed memory for the next step instead of returning it.

    By default glibc raises its mmap threshold as large blocks are freed and trims the heap
    back to the OS, so after the first epoch every CPU training step page-faults thousands
    of fresh pages (docs/speed.md). The same as exporting MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_; if either is exported, that setting is left as it is.
    """
    exported = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys()
    if exported or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 2**31 - 1)
    mallopt(m_trim_threshold, 2**31 - 1)


class CachedCudaCheck(L.Callback):
    """Lets torch answer "is CUDA available?" from its cached device count while training.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that the question never
    initialises CUDA before processes are forked. torch asks it in every ``optimizer.step()``
    (``current_accelerator(check_available=True)``), and the NVML route opens the NVML
    library each time, which doubles the cost of a small network's Adam step on a CPU machine
    with torch's CUDA build (docs/speed.md). By ``on_train_start`` every process of the run
    has been launched, so the cached route is safe; the setting is put back when training ends.
    """

    variable = "PYTORCH_NVML_BASED_CUDA_CHECK"

    def __init__(self) -> None:
        self._previous: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = os.environ.get(self.variable)
        os.environ[self.variable] = "0"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is None:
            os.environ.pop(self.variable, None)
        else:
            os.environ[self.variable] = self._previous

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, pl_module)
