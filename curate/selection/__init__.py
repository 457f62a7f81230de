"""Choosing training subsets from a difficulty-annotated dataset (``python -m curate select``).

``config`` holds the typed recipe schema, ``rules`` the pure row choices over the score columns
(bucket rules, random controls, balancing, QuaDMix, split), ``export`` the reading of shards and the
writing of the chosen rows; ``curate.select`` ties them together and is the command line.
"""
