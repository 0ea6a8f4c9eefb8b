"""Glue of the end-to-end retrain (flows/retrain.py) across the registry, release and tracking
adapters: evidence gathering and registration with reuse, the demo approval, promotion,
release of the champion, and the run summary."""
