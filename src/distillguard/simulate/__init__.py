"""Traffic simulator: benign populations and distillation campaigns, run against detection.

``scenario`` loads a TOML scenario; ``replay`` runs it straight into the detection
pipeline on a simulated clock; ``live`` runs it as real HTTP through a gateway in
simulation mode; ``metrics`` and ``report`` turn either run into figures and an HTML page.
"""
