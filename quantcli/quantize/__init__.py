"""Planning and rewriting: params (scale/zero point), rules (per op), plan, one planner/rewriter per mode."""

FP16_COUNT = 1  # mixed: how many of the most INT8-sensitive nodes run in FP16 by default (--fp16-count)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # weights-int4: values per block along K
DEFAULT_BLOCK_SIZE = 32
