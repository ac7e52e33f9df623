"""Product-in-hand image editing: the pairs dataset and its data source (:mod:`slas.editing.data`, checked
by :mod:`slas.editing.checks`), the edit policies and DiffusionNFT."""
