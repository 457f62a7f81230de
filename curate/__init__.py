"""hardmode curation: score every multimodal sample's difficulty with the model itself.

Data flows one way: read a corpus into the canonical schema (`curate.schema`), score it with PISM
and/or CMAB on generation engines (`curate.engines`), write a difficulty-annotated Parquet dataset,
then select subsets for training (`curate.select`).
"""

__version__ = "0.1.0"
