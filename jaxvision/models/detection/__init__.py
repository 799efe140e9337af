"""Object detection families, one file per family: module + assign_targets + loss + postprocess."""
