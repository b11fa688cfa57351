"""Evaluation beyond loss: generation metrics, multiple-choice scoring and lm-evaluation-harness.

`gptkit eval RUN --generate FILE` (generation.py + metrics.py), `--choices FILE` (choices.py) and
`--tasks NAMES` (harness.py); report.py formats every `gptkit eval` result. The scoring
libraries are the optional `eval` extra (optional.py imports them on first use).
"""
