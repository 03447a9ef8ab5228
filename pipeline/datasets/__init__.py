"""The data, from a source to training batches: sources, the prepared format, encoders, the training set."""
