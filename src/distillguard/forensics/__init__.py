"""Forensics: prove, with a p-value, that a suspect model or corpus learned from our outputs.

``suspects``: what can be put to a test (an HTTP endpoint, local weights, a corpus).
``radioactivity``: the tests themselves, on token ids, on top of the watermark package's
keyed partition and schemes. ``attribution``: which cohorts of accounts, corrected.
``report``: the evidence record (JSON) and its HTML rendering.
"""
