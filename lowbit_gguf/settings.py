"""Defaults the library and the command line share. Nothing heavy is imported here, so the command line reads
them without loading torch."""

DEFAULT_CALIBRATION = "calibration"  # the four default domains of lowbit_gguf.texts
DEFAULT_SAMPLES = 128  # calibration training windows
DEFAULT_SEQ_LEN = 512  # tokens per window
DEFAULT_HELDOUT = 8  # held-out windows, for early stopping

# presets: "default" is each method's config as it is; "fast" trades quality for a run of minutes on a laptop (a first
# look, the demo): fewer, shorter calibration windows here, and each method's own lighter settings (MethodSpec.presets)
PRESETS = ("default", "fast")
PRESET_CALIBRATION = {"fast": {"samples": 16, "seq_len": 256, "heldout": 2}}

# end-to-end fine-tuning (lowbit_gguf.finetune)
FINETUNE_EPOCHS = 1  # passes over the calibration windows
FINETUNE_LR = 1e-4  # Adam
FINETUNE_BATCH = 2  # windows per step
FINETUNE_PATIENCE = 3  # held-out checks without a lower KL before training stops
