"""A tagger folder on disk: its file names, tagtune.json and crf.json, Hugging Face Hub ids
resolved into local folders, and the run markers of a folder being trained into."""
