"""Command-line tools: the embedded demo (and later ``evl-net`` and ``latmus``)."""
