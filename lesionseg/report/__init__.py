"""What the pipeline's report shows: the comparison table, figures, sample masks, and the pull-request report."""
