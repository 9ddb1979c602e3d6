"""The encoders: the family table (families), the encoder config read from config.json (config),
the packed-sequence primitives and the token-classification head (packed), one file per family
(bert, distilbert, modernbert, deberta), the CRF (crf), the span head that labels candidate
spans (spanhead), checkpoint weights in and out (checkpoint), and the precision a device
computes in (precision)."""
