"""What clinicians did with each suggestion, kept durably for the metrics."""
