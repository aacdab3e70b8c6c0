"""Analysis of massive values in attention Q, K and V: statistics, figures, reports, CLI."""
from probes.massive import (
    PROBE_SITES,
    PROJ_SITES,
    as_set,
    check_sites,
    class_share,
    column_norms,
    concentration,
    frequency_map,
    head_ratio,
    lowfreq_share,
    norm_matrices,
    probe_sites,
    select_dims,
    sum_squares,
    summarize,
    threshold_mask,
    threshold_rule,
    topk_dims,
    topk_mask,
    topk_rule,
)

__all__ = ["PROBE_SITES", "PROJ_SITES", "as_set", "check_sites", "class_share", "column_norms", "concentration",
           "frequency_map", "head_ratio", "lowfreq_share", "norm_matrices", "probe_sites", "select_dims",
           "sum_squares", "summarize", "threshold_mask", "threshold_rule", "topk_dims", "topk_mask", "topk_rule"]
