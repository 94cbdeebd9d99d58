"""Planning and rewriting: params (scale/zero point), rules (per op), plan, one planner/rewriter per mode."""

MODES = ("static", "dynamic", "weights-int8", "weights-int4", "fp16", "bf16")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # weights-int4: values per block along K
DEFAULT_BLOCK_SIZE = 32
