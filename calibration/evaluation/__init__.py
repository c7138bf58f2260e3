"""winclip-eval: the paper's metrics for a bundle on MVTec-AD, VisA or a line's own labelled parts.

layouts.py reads the labelled sets, evaluate.py runs each category through the
runtime's Detector (engine_pass.py: one engine pass, cached), metrics.py holds
METRICS (the table), report.py writes the table and the HTML report.
"""
