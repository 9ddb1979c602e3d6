"""Annotated text and its tags: the format readers, the tagging schemes, subword alignment and
windows, batch packing and the entity metrics. No torch."""
