"""Annotated text and its tags: the format readers, the tagging schemes, subword alignment and
windows, batch packing, the span head's candidate spans and their decoding, and the entity
metrics. No torch."""
