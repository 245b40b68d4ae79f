"""The colours every figure of the report uses, in the HTML page and in the PNG files alike."""

FEASIBLE, INFEASIBLE, BASELINE, FRONT = "#1f77b4", "#b0b0b0", "#d62728", "#2ca02c"
