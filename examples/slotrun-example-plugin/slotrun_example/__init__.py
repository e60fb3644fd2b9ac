"""An example slotrun plugin: a learned-query cross-attention grouper and an attention-entropy regulariser."""
