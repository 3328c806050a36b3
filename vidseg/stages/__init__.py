"""Pipeline stages: source (decode + dispatch), worker (inference), sink (reorder + composite + encode)."""
