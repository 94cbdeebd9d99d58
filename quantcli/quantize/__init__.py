"""Planning and rewriting: params (scale/zero point), rules (per op), plan, one planner/rewriter per mode."""

MODES = ("static", "dynamic", "weights-int8", "fp16", "bf16")
