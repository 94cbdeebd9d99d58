"""Planning and rewriting: params (scale/zero point), rules (per op), plan, qdq (the rewriter)."""
