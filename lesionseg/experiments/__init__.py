"""How runs differ and what was recorded: run records, paired comparisons, committed results and their tables."""
