"""Data that ships inside the package, so the lab runs offline (licences in README.md here).

    from lab.data.labelled_text import BUNDLED     # sentiment.jsonl: the text classifier's default data
    python -m lab.data.bundled.make_sentiment      # how sentiment.jsonl was made (rewrites it identically)
"""
