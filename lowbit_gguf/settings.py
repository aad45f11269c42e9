"""Defaults the library and the command line share. Nothing heavy is imported here, so the command line reads
them without loading torch."""

DEFAULT_CALIBRATION = "calibration"  # the four default domains of lowbit_gguf.texts
DEFAULT_SAMPLES = 128  # calibration training windows
DEFAULT_SEQ_LEN = 512  # tokens per window
DEFAULT_HELDOUT = 8  # held-out windows, for early stopping

# end-to-end fine-tuning (lowbit_gguf.finetune)
FINETUNE_EPOCHS = 1  # passes over the calibration windows
FINETUNE_LR = 1e-4  # Adam
FINETUNE_BATCH = 2  # windows per step
FINETUNE_PATIENCE = 3  # held-out checks without a lower KL before training stops
