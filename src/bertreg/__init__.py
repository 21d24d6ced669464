"""bertreg: K-fold fine-tuning of BERT-family encoders for text regression."""

__version__ = "0.1.0"
