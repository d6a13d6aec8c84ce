"""Training data: manifests and shards read into samples and a batch order (``sampling``), images
read without trusting them, caption lengths, caches of frozen outputs, and the batches the step eats."""
