"""Tables, published-number comparison, significance, plots and the HTML report.

Everything here is a pure function of a results folder (see fairbench.runs.results): nothing retrains.
Modules: aggregate (runs → tidy frame, config variants, mean ± std), tables (Table 1 / ablation
layouts), render (terminal, markdown, LaTeX, CSV, HTML tables), paper (published numbers),
significance (paired comparisons), plots (matplotlib figures), html (the one-page report).
"""
